"""skcflow: scikit-learn style visual anomaly detection and localization.

CFLOW-AD (:class:`CFlowAD`) beside the :class:`PaDiM` and :class:`SPADE`
baselines, all fed by one :class:`FeatureExtractor`.
"""

from . import metrics, model_selection
from ._version import __version__
from .cflow import CFlowAD
from .datasets import load_images, load_mvtec, make_defects
from .features import FeatureExtractor, Features
from .padim import PaDiM
from .persistence import load, save
from .pipeline import AnomalyPipeline, make_pipeline
from .spade import SPADE

__all__ = [
    "AnomalyPipeline",
    "CFlowAD",
    "FeatureExtractor",
    "Features",
    "PaDiM",
    "SPADE",
    "__version__",
    "load",
    "load_images",
    "load_mvtec",
    "make_defects",
    "make_pipeline",
    "metrics",
    "model_selection",
    "save",
]
