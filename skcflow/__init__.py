"""skcflow: scikit-learn style visual anomaly detection and localization.

CFLOW-AD (:class:`CFlowAD`) beside the :class:`PaDiM` and :class:`SPADE`
baselines, all fed by one :class:`FeatureExtractor`.

Names are imported on first use, so that ``skcflow.runtime``, which scores
exported models with onnxruntime, loads without torch or scikit-learn.
"""

import importlib

from ._version import __version__

_NAMES = {
    "AnomalyPipeline": "pipeline",
    "CFlowAD": "cflow",
    "FeatureExtractor": "features",
    "Features": "features",
    "PaDiM": "padim",
    "SPADE": "spade",
    "export_onnx": "export",
    "load": "persistence",
    "load_images": "datasets",
    "load_mvtec": "datasets",
    "make_defects": "datasets",
    "make_pipeline": "pipeline",
    "save": "persistence",
}
_SUBMODULES = ("datasets", "export", "geometry", "metrics", "model_selection", "persistence",
               "readers", "runtime")

__all__ = ["__version__", *sorted(_NAMES), *_SUBMODULES]


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'skcflow' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
