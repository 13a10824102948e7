"""Scoring exported models on the line: numpy, onnxruntime and Pillow, no torch.

:class:`OnnxDetector` loads a file written by :func:`skcflow.export_onnx`
(or ``skcflow export``) and answers as the fitted pipeline does:
``anomaly_map``, ``score_samples``, ``decision_function``, ``predict`` and
``predict_mask``, for images of the model's frame. :meth:`OnnxDetector.read_images`
reads files into that frame the way skcflow's loaders do (TIFF needs
tifffile and imagecodecs too). Nothing on this path imports torch or
scikit-learn; a deployment needs::

    pip install onnxruntime numpy pillow      # plus tifffile imagecodecs for TIFF
"""

import json
import os

import numpy as np

from .._images import check_bit_depth, check_images
from ..calibration import pvalues, thresholds
from ..readers import read_images

# What skcflow.export writes and this module reads. 2: the metadata says
# whether an image's score is its map's maximum (CFlowAD's image_score).
FORMAT = "skcflow-onnx"
FORMAT_VERSION = 2

__all__ = ["OnnxDetector"]


class OnnxDetector:
    """A pipeline exported by :func:`skcflow.export_onnx`, scored by onnxruntime.

    Parameters
    ----------
    path : str or path-like
        The ``.onnx`` file.
    n_threads : int, default=None
        Threads of onnxruntime's operators; ``None`` lets onnxruntime choose.
    batch_size : int, default=32
        Images scored at once; bounds memory.
    providers : list of str, default=None
        onnxruntime execution providers, e.g. ``["CUDAExecutionProvider",
        "CPUExecutionProvider"]``; ``None`` uses the CPU.

    Attributes
    ----------
    method_ : str
        ``"CFlowAD"`` or ``"PaDiM"``.
    offset_, pixel_threshold_ : float
        The fitted detector's thresholds.
    frame_size_ : tuple of int
        ``(height, width)`` of the images the graph takes.
    keep_aspect_ : bool
        Whether files are letterboxed into the frame.
    bit_depth_ : int
        Bits per sample of the fitted images (``uint8`` input for 8,
        ``uint16`` otherwise).
    provenance_ : dict
        Versions and the feature extractor's identity, as in model files.
    """

    def __init__(self, path, n_threads=None, batch_size=32, providers=None):
        import onnxruntime

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"ONNX model file not found: {self.path}")
        options = onnxruntime.SessionOptions()
        if n_threads is not None:
            options.intra_op_num_threads = int(n_threads)
            options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                self.path, options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own errors for invalid files
            raise ValueError(f"{self.path} is not a readable ONNX model ({exc}).") from exc
        document = self._session.get_modelmeta().custom_metadata_map.get("skcflow")
        try:
            metadata = json.loads(document)
            readable = (metadata["format"] == FORMAT and metadata["format_version"] == FORMAT_VERSION
                        and isinstance(metadata["maps_score_images"], bool))
        except (TypeError, ValueError, KeyError):
            readable = False
        if not readable:
            raise ValueError(f"{self.path} is an ONNX model, but not one exported by this skcflow "
                             f"(no readable 'skcflow' metadata of format version {FORMAT_VERSION}); "
                             "export the pipeline again.")
        self.batch_size = batch_size
        self.method_ = metadata["method"]
        self._maps_score_images = metadata["maps_score_images"]
        self.offset_ = float(metadata["offset"])
        self.pixel_threshold_ = float(metadata["pixel_threshold"])
        self.frame_size_ = tuple(metadata["frame_size"])
        self.keep_aspect_ = bool(metadata["keep_aspect"])
        self.bit_depth_ = int(metadata["bit_depth"])
        self.provenance_ = metadata["provenance"]
        self.training_scores_ = np.asarray(metadata["training_scores"], dtype=np.float64)
        self.training_map_maxima_ = np.asarray(metadata["training_map_maxima"], dtype=np.float64)
        self._input_dtype = np.dtype(metadata["input_dtype"])

    def __repr__(self):
        return f"OnnxDetector({self.path!r}: {self.method_}, {self.frame_size_[0]}x{self.frame_size_[1]})"

    def _check(self, X):
        X = check_images(X)
        if X.dtype != self._input_dtype:
            raise ValueError(
                f"the exported graph takes {self._input_dtype.name} images (the model was fitted on "
                f"{self.bit_depth_}-bit images); got {X.dtype}."
            )
        check_bit_depth(X, self.bit_depth_)
        if X.shape[1:3] != self.frame_size_:
            raise ValueError(
                f"the exported graph takes images of its frame, {self.frame_size_[0]}x"
                f"{self.frame_size_[1]} (height x width); got {X.shape[1]}x{X.shape[2]}. Read files "
                "with read_images, which brings them into the frame."
            )
        return X

    def run(self, X):
        """The graph's outputs: ``(anomaly_map, anomaly_score)``.

        Parameters
        ----------
        X : ndarray of shape (n_images, H, W, 3)
            Images of the frame, of the input dtype.

        Returns
        -------
        maps : ndarray of shape (n_images, H, W), float32
            Higher where more anomalous.
        scores : ndarray of shape (n_images,), float64
            Image anomaly scores, higher for more anomalous images.
        """
        X = self._check(X)
        maps, scores = [], []
        for start in range(0, len(X), self.batch_size):
            batch = np.ascontiguousarray(X[start : start + self.batch_size])
            anomaly_map, anomaly_score = self._session.run(None, {"images": batch})
            maps.append(anomaly_map)
            scores.append(anomaly_score)
        maps, scores = np.concatenate(maps), np.concatenate(scores).astype(np.float64)
        if not (np.isfinite(maps).all() and np.isfinite(scores).all()):
            raise FloatingPointError(f"{self.path} produced non-finite anomaly maps or scores.")
        return maps, scores

    def anomaly_map(self, X):
        """Per-pixel anomaly maps ``(n_images, H, W)``, float32, higher where more anomalous."""
        return self.run(X)[0]

    def score_samples(self, X):
        """Opposite of the image anomaly score: higher is more normal."""
        return -self.run(X)[1]

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for predicted anomalies."""
        return self.score_samples(X) - self.offset_

    def predict(self, X, alpha=None):
        """+1 for normal images, -1 for anomalous ones (p-value at most ``alpha``, if given)."""
        if alpha is not None:
            return np.where(self.score_pvalues(X) <= alpha, -1, 1)
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def predict_mask(self, X, alpha=None):
        """Binary defect masks ``(n_images, H, W)``, uint8: map above ``pixel_threshold_``
        (or pixel p-value at most ``alpha``, if given)."""
        if alpha is not None:
            return (self.pvalue_map(X) <= alpha).astype(np.uint8)
        return (self.anomaly_map(X) > self.pixel_threshold_).astype(np.uint8)

    def score_pvalues(self, X):
        """Conformal p-values of normality of each image (see :mod:`skcflow.calibration`)."""
        return pvalues(self.run(X)[1], self.training_scores_)

    def pvalue_map(self, X):
        """Per-pixel conformal p-values of normality ``(n_images, H, W)``."""
        return pvalues(self.anomaly_map(X), self.training_map_maxima_).astype(np.float32)

    def set_threshold(self, *, contamination=None, false_alarm_rate=None, score=None):
        """Move ``offset_`` and ``pixel_threshold_`` as the fitted detector's
        ``set_threshold`` does, from the training scores the file carries."""
        self.offset_, self.pixel_threshold_, _ = thresholds(
            self.training_scores_, self.training_map_maxima_, self._maps_score_images,
            contamination=contamination, false_alarm_rate=false_alarm_rate, score=score)
        return self

    def read_images(self, paths_or_folder, errors="raise"):
        """Read image files into the model's frame, as skcflow's loaders do.

        Returns
        -------
        images : ndarray of shape (n, H, W, 3)
        filenames : list of str
        sizes : list of (height, width)
            Each file's own size, to take maps back to it with
            :func:`skcflow.geometry.restore`.
        """
        images, filenames, sizes, _ = read_images(paths_or_folder, self.frame_size_,
                                                  self.keep_aspect_, errors)
        return images, filenames, sizes
