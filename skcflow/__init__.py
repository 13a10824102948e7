"""skcflow: scikit-learn style visual anomaly detection and localization.

CFLOW-AD (:class:`CFlowAD`) beside the :class:`PaDiM` and :class:`SPADE`
baselines, all fed by one :class:`FeatureExtractor`.
"""

from ._version import __version__
from .cflow import CFlowAD
from .datasets import load_images, load_mvtec, make_defects
from .features import FeatureExtractor, Features
from .pipeline import AnomalyPipeline, make_pipeline

__all__ = [
    "AnomalyPipeline",
    "CFlowAD",
    "FeatureExtractor",
    "Features",
    "__version__",
    "load_images",
    "load_mvtec",
    "make_defects",
    "make_pipeline",
]
