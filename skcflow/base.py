"""What the three detectors share, written once.

:class:`BaseDetector` turns a method's per-batch anomaly maps into the
scikit-learn outlier-detector API: input validation, batching, devices,
``score_samples`` / ``decision_function`` / ``predict`` / ``anomaly_map`` /
``predict_mask``, the ``contamination`` offset and the pixel threshold. A
method only implements ``_fit`` (learn its state from normal features) and
``_batch_maps`` (anomaly maps of a small batch at input resolution); one
that scores images otherwise than by the maximum of the map also
overrides ``_batch_scores`` (and ``_maps_score_images`` where it can do
both).
"""

import copy
import threading
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils import check_random_state
# Private, as in scikit-learn's own estimators: parameter constraints have no public API.
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._device import resolve_device
from ._fitted import TensorSpec, device, integer, optional, real, sequence, shape, without_caches
from ._progress import progress
from .calibration import pvalues, thresholds
from .features import IDENTITY, Features, _on_gpu
from .geometry import resize_matrix, restore, smooth_resize_matrix
from .threads import parallel_map, single_threaded


def _along_axes(maps, rows, cols):
    """``rows @ map @ cols.T`` for each map of ``(..., H, W)``: one linear map per axis.

    Both products multiply from the right, with the maps folded into the
    rows of one matrix product, so that a map's values do not depend on how
    many maps share the product.
    """
    rows, cols = _tensor_like(rows, maps), _tensor_like(cols, maps)
    maps = torch.matmul(maps, cols.T)
    return torch.matmul(maps.transpose(-1, -2), rows.T).transpose(-1, -2)


def _tensor_like(matrix, maps):
    """A NumPy ``matrix`` as a tensor of the ``maps``' dtype and device."""
    return torch.tensor(matrix, dtype=maps.dtype, device=maps.device)


def upsample(maps, size):
    """Bilinearly resize maps ``(..., H, W)`` to ``size`` (see
    :func:`skcflow.geometry.resize_matrix`)."""
    height, width = maps.shape[-2:]
    if (height, width) == tuple(size):
        return maps
    return _along_axes(maps, resize_matrix(height, size[0]), resize_matrix(width, size[1]))


def upsampled_mean(maps, size):
    """The mean of maps ``(N, H_k, W_k)`` of several sizes, each resized
    bilinearly to ``size`` as :func:`upsample` does, as one matrix product.

    Each map's columns are resized first; the row resizings, side by side
    (and divided by the number of maps), then resize and add all of them
    in one product per image, into maps laid out as they are returned.
    Resized one by one, each into a transposed map that the sum, every
    pass after it and the float32 copy of the result read across,
    CFlowAD's aggregation of 8 images took 3.4 ms on one thread of this
    project's CPU, against 2.2 ms so (at 256 px, efficientnet_lite0's two
    coarsest levels), to within 2e-15 of the same values.
    """
    # Sizes as Python numbers: traced into a graph, they are tensors.
    along_rows = torch.cat([_tensor_like(resize_matrix(int(m.shape[-2]), size[0]) / len(maps), m)
                            for m in maps], 1)
    # Each map's columns resized: its rows folded into one product.
    columns = torch.cat([torch.matmul(m, _tensor_like(resize_matrix(int(m.shape[-1]), size[1]), m).T)
                         for m in maps], -2)
    # One product of the same shape per image: an image's map does not
    # depend on how many share the call.
    return torch.matmul(along_rows, columns)


def joined(tensors):
    """``torch.cat(tensors)``, without a copy of a single tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def all_finite(tensor):
    """Whether every value of a non-empty tensor is finite.

    A sum is finite only where every value is (a NaN or an infinity
    carries through it), and summing is the cheapest pass over a batch of
    full-resolution maps: ``isfinite(tensor).all()`` makes three, and
    ``aminmax`` took 1.4 ms of a worker's 18 ms over 8 of CFlowAD's float64
    maps. A sum that overflows is checked again, value by value.
    """
    if torch.isfinite(tensor.sum()):
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def split_channels(channels, dims):
    """Per level, the indices of the ``channels`` (of the concatenated
    pyramid, increasing) that lie in it, as long tensors."""
    channels = torch.as_tensor(np.asarray(channels), dtype=torch.long)
    starts = np.cumsum([0, *dims])
    return [channels[(channels >= lo) & (channels < hi)] - lo for lo, hi in zip(starts, starts[1:])]


def concat_levels(maps, channels=None, device=None):
    """The pyramid's levels side by side at the finest level's resolution.

    Coarser levels are upsampled bilinearly. PaDiM's reference
    ``embedding_concat`` copies each coarse vector over its whole cell
    (nearest neighbour); interpolating instead gives every fine position
    coarse features that vary with where it lies in the cell, which
    measurably sharpens the maps (on MTD magnetic tiles at 256 px, PaDiM's
    pixel AUROC rises from 0.760 to 0.775 and its image AUROC from 0.960 to
    0.964).

    Parameters
    ----------
    maps : sequence of torch.Tensor of shape (n_images, D_k, H_k, W_k)
        The pyramid, finest level first.
    channels : list of torch.Tensor, default=None
        Per level, the channels to keep (:func:`split_channels`); they are
        picked before upsampling, so that dropped channels are never copied.
    device : torch.device, default=None
        Where the result is built; ``None`` keeps the maps' device.

    Returns
    -------
    embedding : torch.Tensor of shape (n_images, n_channels, H_1, W_1)
    """
    size = maps[0].shape[-2:]
    levels = []
    for k, fmap in enumerate(maps):
        if channels is not None:
            if not len(channels[k]):
                # A small random subset may miss a level entirely.
                continue
            fmap = fmap.index_select(1, channels[k].to(fmap.device))
        levels.append(upsample(fmap.to(device), size))
    return torch.cat(levels, 1)


def smooth_upsample(maps, size, sigma):
    """Distance maps at feature resolution to smoothed maps at ``size``.

    The post-processing of PaDiM and SPADE: bilinear upsampling, then
    Gaussian smoothing of ``sigma`` frame pixels with reflected borders
    (:func:`skcflow.geometry.blur_matrix`), as one linear map per axis.
    """
    height, width = maps.shape[-2:]
    return _along_axes(maps, smooth_resize_matrix(height, size[0], sigma),
                       smooth_resize_matrix(width, size[1], sigma))


def normal_samples(features, y):
    """Keep the normal samples of a labelled set.

    ``y`` may be image labels (0 normal) or masks (normal when empty), so
    that model selection can pass folds that contain anomalies.
    """
    return features if y is None else features[normal_rows(len(features), y)]


def normal_rows(n, y):
    """Indices of the normal samples among ``n`` labelled by ``y`` (see
    :func:`normal_samples`); all of them when ``y`` is None."""
    if y is None:
        return np.arange(n)
    y = np.asarray(y)
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} entries but X has {n} images.")
    normal = ~y.reshape(len(y), -1).astype(bool).any(axis=1)
    if not normal.any():
        raise ValueError("y marks every sample as anomalous; fit needs normal samples.")
    return np.flatnonzero(normal)


class BaseDetector(OutlierMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class of skcflow's anomaly detectors.

    Scores follow scikit-learn's outlier convention: ``score_samples`` is
    higher for more normal images, ``decision_function`` is negative for
    outliers and ``predict`` returns +1 (normal) or -1 (anomalous).
    ``anomaly_map`` is higher where an image is more anomalous; the image
    anomaly score is the maximum of its map unless the method defines its
    own (``_batch_scores``).

    Every normalising constant is learned in ``fit``: an image's map never
    depends on the other images it is scored with.
    """

    _parameter_constraints = {
        "contamination": [Interval(Real, 0, 0.5, closed="right")],
        "pixel_threshold": [None, Real],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [None, Interval(Integral, None, -1, closed="right"),
                   Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "verbose": ["verbose"],
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Features, the FeatureExtractor's output, not 2-D arrays.
        tags.input_tags.two_d_array = False
        tags.non_deterministic = _on_gpu(self.device)
        return tags

    @single_threaded()
    def fit(self, X, y=None):
        """Learn the normal appearance from features of defect-free images.

        Parameters
        ----------
        X : Features, or a re-iterable of Features
            Output of :meth:`skcflow.FeatureExtractor.transform`; or, for
            training sets larger than memory, batches of it that can be
            iterated over twice (a list of ``Features``, or a
            :class:`~skcflow.pipeline.FeatureStream`, which reads and encodes
            images from files as it goes): fit then holds one batch at a time
            (and the method's statistics), and a second pass scores the
            training images for the thresholds.
        y : array-like of shape (n_images,) or (n_images, H, W), default=None
            Optional image labels (1 anomalous) or masks, with ``Features``
            only; only normal samples are used, so model-selection folds may
            hold anomalies.

        Returns
        -------
        self
        """
        self._validate_params()  # scikit-learn's (private) check of _parameter_constraints
        if isinstance(X, Features):
            batches = [normal_samples(self._check_features(X, reset=True), y)]
        else:
            if y is not None:
                raise ValueError("y is taken with Features only, not with a stream of batches.")
            batches = _reiterable(X)
        self._learn(batches, first=True, in_memory=isinstance(X, Features))
        self._fit_thresholds(batches)
        return self

    @single_threaded()
    def partial_fit(self, X, y=None):
        """Learn from more normal images: the first call fits, later ones update.

        What an update is exact for, and what it approximates, depends on
        the method (see its documentation). The thresholds come from the
        training images' scores, those of earlier calls as they were scored
        then, and those of the new images under the updated model.

        Parameters
        ----------
        X : Features
            A batch of normal images' features.
        y : array-like, default=None
            As for :meth:`fit`.

        Returns
        -------
        self
        """
        self._validate_params()  # scikit-learn's (private) check of _parameter_constraints
        first = "offset_" not in vars(self)
        features = normal_samples(self._check_features(X, reset=first), y)
        start = 0 if first else self.n_train_samples_
        if not first:
            self._resume()
        self._learn([features], first=first, in_memory=False)
        self._fit_thresholds([features], start)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then label the training images as ``offset_`` was set from them.

        Each training image is scored left out of its own statistics where
        the method can (all three can), as :class:`~sklearn.neighbors.LocalOutlierFactor`
        does: in-sample predictions would call nearly every training image
        normal. Images ``y`` marks as anomalous, left out of the fit, get
        :meth:`predict`'s labels.

        Parameters
        ----------
        X, y
            As for :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_images,)
            +1 for normal, -1 for anomalous, in the order of ``X``.
        """
        self.fit(X, y)
        training = np.where(-self.training_scores_ - self.offset_ >= 0, 1, -1)
        if y is None:
            return training
        normal = ~np.asarray(y).reshape(len(X), -1).astype(bool).any(axis=1)
        labels = np.empty(len(X), dtype=int)
        labels[normal] = training
        if not normal.all():
            labels[~normal] = self.predict(X[np.flatnonzero(~normal)])
        return labels

    def _learn(self, batches, first, in_memory):
        """Accumulate ``batches`` into the method's statistics, then complete it."""
        for batch in progress(batches, self.verbose, desc="fitting", unit="batch"):
            if first:
                batch = self._check_features(batch, reset=True)
                self.device_ = resolve_device(self.device)
                self.n_train_samples_ = 0
                self._begin(batch, in_memory)
                first = False
            batch = self._check_features(batch)
            self._accumulate(batch)
            self.n_train_samples_ += len(batch)
        if first:
            raise ValueError("no images were given (empty input).")
        self._complete()

    def _fit_thresholds(self, batches, start=0):
        """``offset_`` and ``pixel_threshold_`` from the training images' scores.

        The images of ``batches`` are scored (each left out of its own
        statistics where the method can) and join those scored before
        ``start``.
        """
        scores, maxima = self._training_outputs(batches, start)
        if start:
            scores = np.concatenate([self.training_scores_, scores])
            maxima = np.concatenate([self.training_map_maxima_, maxima])
        self.training_scores_, self.training_map_maxima_ = scores, maxima
        self._set_thresholds(contamination=self.contamination)
        self.model_size_bytes_ = self._model_size()

    def _set_thresholds(self, **choice):
        self.offset_, pixel, contamination = thresholds(
            self.training_scores_, self.training_map_maxima_, self._maps_score_images(), **choice)
        self.pixel_threshold_ = pixel if self.pixel_threshold is None else float(self.pixel_threshold)
        return contamination

    def set_threshold(self, *, contamination=None, false_alarm_rate=None, score=None):
        """Move the decision thresholds, without a refit.

        ``offset_`` and ``pixel_threshold_`` (unless the ``pixel_threshold``
        parameter fixes it) are set anew from the stored training scores,
        ``training_scores_`` and ``training_map_maxima_``; nothing else of
        the fitted state changes. Give exactly one of:

        Parameters
        ----------
        contamination : float in (0, 0.5]
            The share of training images to flag, as a refit with this
            ``contamination`` would: the same decisions. The parameter is
            set too.
        false_alarm_rate : float in (0, 1)
            Flag images whose p-value of normality (:meth:`score_pvalues`) is
            at most this: a new normal image is flagged with probability at
            most ``false_alarm_rate`` (see :mod:`skcflow.calibration`). The
            ``contamination`` parameter becomes the one with which a refit
            makes the same decisions.
        score : float
            Flag images whose anomaly score (``-score_samples``) exceeds it.

        Returns
        -------
        self
        """
        check_is_fitted(self)
        contamination = self._set_thresholds(contamination=contamination,
                                             false_alarm_rate=false_alarm_rate, score=score)
        if contamination is not None:
            self.contamination = contamination
        return self

    def _cached_maps(self, key, build):
        """``build()``'s scoring module, kept while ``key`` holds."""
        maps = self.__dict__.get("_cache_maps")
        if maps is None or maps.key != key:
            maps = build()
            maps.key = key
            # Published only when complete: the scoring workers call this at
            # once, and one that found it half-built would fail. Two may
            # both build it; they build the same module.
            self._cache_maps = maps
        return maps

    def _training_outputs(self, batches, start):
        """Image scores and map maxima ``(N,), (N,)`` of the training images in ``batches``."""
        # Written in place, not gathered: small results kept from batch to
        # batch would pin the memory freed between them, and memory would
        # grow with a stream's length.
        outputs, row = np.empty((self.n_train_samples_ - start, 2)), 0
        for batch in second_pass(batches, len(outputs)):
            for out in self._iter_batches(batch, self._training_batch, start + row):
                outputs[row : row + len(out)] = out.double().numpy()
                row += len(out)
        return outputs[:, 0], outputs[:, 1]

    def _training_batch(self, features, rows):
        """``(B, 2)``: each training image's score and map maximum.

        ``rows`` are the images' indices among all training images, for the
        methods that leave an image out of its own scoring.
        """
        maxima = self._training_batch_maps(features, rows).flatten(1).amax(1)
        return torch.stack([maxima, maxima], 1)

    def _training_batch_maps(self, features, rows):
        """Maps of training images, from which the thresholds come; methods
        that can leave each image out of its own statistics do."""
        return self._batch_maps(features)

    @abstractmethod
    def _begin(self, features, in_memory):
        """Start the method's statistics, from the first batch of a fit.

        ``in_memory``: the whole training set is this one batch, so it may
        be kept.
        """

    @abstractmethod
    def _accumulate(self, features):
        """Add a batch of normal images to the statistics."""

    @abstractmethod
    def _complete(self):
        """The fitted state, from the statistics (after every update)."""

    def _resume(self):
        """Restore statistics an update needs that a saved or pickled model
        lacks (they are kept in memory only)."""

    @abstractmethod
    def _batch_maps(self, features):
        """Anomaly maps ``(B, H, W)`` of a small batch, at input resolution."""

    @abstractmethod
    def _fitted_tensors(self):
        """The tensors of the fitted state, for the model size."""

    def _empty_modules(self):
        """Unfitted ``nn.Module`` attributes, for :func:`skcflow.load` to fill."""
        return {}

    def _fitted_schema(self):
        """The plain fitted attributes and what each must be (see :mod:`skcflow._fitted`)."""
        return {
            "feature_shapes_": sequence(shape(3)),
            "frame_size_": shape(2),
            "extractor_identity_": optional(IDENTITY),
            "device_": device(),
            "n_train_samples_": integer(1),
            "offset_": real(),
            "pixel_threshold_": real(),
            "model_size_bytes_": integer(0),
        }

    def _fitted_tensor_specs(self):
        """Shape and dtype of each fitted tensor, from the parameters and the
        plain fitted attributes: ``{name: TensorSpec or list of them}``."""
        n = self.n_train_samples_
        return {"training_scores_": TensorSpec((n,), torch.float64, array=True),
                "training_map_maxima_": TensorSpec((n,), torch.float64, array=True)}

    def _model_size(self):
        return sum(t.numel() * t.element_size() for t in self._fitted_tensors())

    def _check_fitted(self):
        """What is inconsistent in a loaded fitted state, or None."""
        size = self._model_size()
        if size != self.model_size_bytes_:
            return f"model_size_bytes_ is {self.model_size_bytes_} but its tensors hold {size} bytes."
        return None

    def _batch_scores(self, features):
        """Image anomaly scores ``(B,)`` of a small batch: the maps' maxima.

        Methods whose paper scores images otherwise override this; their
        default pixel threshold then comes from the training maps.
        """
        return self._batch_maps(features).flatten(1).amax(1)

    def _maps_score_images(self):
        """Whether an image's score is its map's maximum (the pixel threshold
        is then the image threshold)."""
        return type(self)._batch_scores is BaseDetector._batch_scores

    def _check_features(self, X, reset=False):
        if not isinstance(X, Features):
            raise TypeError(
                f"{type(self).__name__} takes the output of FeatureExtractor.transform, "
                f"got {type(X).__name__}. To use raw images, build a pipeline: "
                f"skcflow.make_pipeline(FeatureExtractor(), {type(self).__name__}())."
            )
        if len(X) == 0:
            raise ValueError("no images were given (empty input).")
        if reset:
            self.feature_shapes_ = X.shapes
            self.frame_size_ = X.frame_size
            self.extractor_identity_ = X.extractor
            return X
        if X.shapes != self.feature_shapes_ or X.frame_size != self.frame_size_:
            raise ValueError(
                f"features have shapes {X.shapes} from a frame of {X.frame_size} pixels, but "
                f"the model was fitted on {self.feature_shapes_} from {self.frame_size_}: use "
                "the same backbone, layers and image_size."
            )
        fitted = self.extractor_identity_
        if fitted is not None and X.extractor is not None and X.extractor != fitted:
            differences = "; ".join(
                f"{key} {X.extractor.get(key)!r} instead of {fitted.get(key)!r}"
                for key in sorted(set(fitted) | set(X.extractor))
                if X.extractor.get(key) != fitted.get(key)
            )
            raise ValueError(
                f"these features come from another feature extractor than the one "
                f"{type(self).__name__} was fitted on ({differences}); score features of "
                "the fitted extractor (a pipeline keeps the two together)."
            )
        return X

    def _iter_batches(self, features, compute, first_row=0):
        """Yield ``compute(batch, rows)`` batch by batch.

        Memory does not grow with the set. ``rows``, the batch's ``range``
        of indices (``features`` starting at ``first_row``), lets a method
        leave a training image out of its own scoring. On a CPU the images
        are computed in pieces of :meth:`_cpu_piece_images` (each on its own
        unless a method says otherwise), by ``n_jobs`` single-threaded
        workers (:mod:`skcflow.threads`): an image's result is then the same
        in any batch, with any ``n_jobs`` and under any load.
        """
        starts = range(0, len(features), self.batch_size)
        for start in progress(starts, self.verbose, desc="scoring", unit="batch"):
            stop = min(start + self.batch_size, len(features))
            batch = _Batch(start, stop)
            parallel_map(lambda piece: self._compute(compute, features, piece, first_row, batch),
                         _pieces(start, stop, self.device_, self._cpu_piece_images()), self.n_jobs)
            yield batch.values.cpu()

    def _cpu_piece_images(self):
        """Images a CPU worker computes at once: one, since the rounding of
        oneDNN's and BLAS's products depends on their shapes; a method
        whose products give each image the same result in any piece may
        take more (fewer, larger operators)."""
        return 1

    def _compute(self, compute, features, piece, first_row, batch):
        # Cast, placed and checked in the worker: a batch of full-resolution
        # float64 maps takes a pass each, which the calling thread would make
        # alone while the workers wait.
        with torch.inference_mode():
            out = batch.put(piece, compute(features[piece.start : piece.stop],
                                           range(first_row + piece.start, first_row + piece.stop)))
        # Checked after the cast: half the bytes to read, and a value beyond
        # float32's range has become an infinity there.
        if not all_finite(out):
            raise FloatingPointError(
                f"{type(self).__name__} produced non-finite anomaly maps or scores; "
                "the model or its input is corrupt."
            )
        return out

    def _iter_maps(self, features):
        return self._iter_batches(features, lambda batch, rows: self._batch_maps(batch))

    def _image_scores(self, features, compute):
        """Image scores ``compute(batch, rows)``, batch by batch, as float64."""
        return np.concatenate([s.double().numpy() for s in self._iter_batches(features, compute)])

    @single_threaded()
    def anomaly_map(self, X):
        """Per-pixel anomaly maps, higher where more anomalous.

        Maps are computed on the extractor's frame, then taken back to the
        images given (a letterbox's padding cut off, then resized
        bilinearly), so they overlay them exactly; image scores come from
        the frame's maps and so do not depend on the size of the images.

        Parameters
        ----------
        X : Features

        Returns
        -------
        maps : ndarray of shape (n_images, height, width), float32
            At the resolution of the images given to the extractor.
        """
        check_is_fitted(self)
        X = self._check_features(X)
        maps = joined(list(self._iter_maps(X))).numpy()
        return restore(maps, X.input_size, X.frame_size, X.keep_aspect)

    @single_threaded()
    def score_samples(self, X):
        """Opposite of the image anomaly score (by default the map's maximum).

        Higher is more normal, as in scikit-learn's outlier detectors.

        Parameters
        ----------
        X : Features

        Returns
        -------
        scores : ndarray of shape (n_images,)
        """
        check_is_fitted(self)
        X = self._check_features(X)
        return -self._image_scores(X, lambda batch, rows: self._batch_scores(batch))

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for predicted anomalies.

        Parameters
        ----------
        X : Features

        Returns
        -------
        scores : ndarray of shape (n_images,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X, alpha=None):
        """+1 for normal images, -1 for anomalous ones.

        Parameters
        ----------
        X : Features
        alpha : float, default=None
            A false-alarm rate: flag images whose p-value of normality is at
            most ``alpha`` (:meth:`score_pvalues`), instead of using
            ``offset_``.

        Returns
        -------
        labels : ndarray of shape (n_images,)
        """
        if alpha is not None:
            return np.where(self.score_pvalues(X) <= alpha, -1, 1)
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def predict_mask(self, X, alpha=None):
        """Binary defect masks: pixels whose map exceeds ``pixel_threshold_``.

        By default the pixel threshold equals the image threshold, so an
        image gets a non-empty mask exactly when it is predicted anomalous;
        for methods with their own image score it is the same quantile of
        the training maps' maxima.

        Parameters
        ----------
        X : Features
        alpha : float, default=None
            A false-alarm rate: mark pixels whose p-value (:meth:`pvalue_map`)
            is at most ``alpha``; a normal image gets a non-empty mask with
            probability at most ``alpha``.

        Returns
        -------
        masks : ndarray of shape (n_images, height, width), uint8
        """
        if alpha is not None:
            return (self.pvalue_map(X) <= alpha).astype(np.uint8)
        check_is_fitted(self)
        return (self.anomaly_map(X) > self.pixel_threshold_).astype(np.uint8)

    @property
    def classes_(self):
        """``[-1, 1]``: the labels of :meth:`predict`, the columns of :meth:`predict_proba`."""
        check_is_fitted(self)
        return np.array([-1, 1])

    def score_pvalues(self, X):
        """Conformal p-values of normality of each image.

        The share of training images (each scored left out of its own
        statistics) at least as anomalous: for a new normal image,
        ``P(p <= a) <= a`` at every level ``a`` (see
        :mod:`skcflow.calibration`).

        Parameters
        ----------
        X : Features

        Returns
        -------
        p : ndarray of shape (n_images,), in (0, 1]
        """
        return pvalues(-self.score_samples(X), self.training_scores_)

    def predict_proba(self, X):
        """``[1 - p, p]`` per image, columns ordered as :attr:`classes_`.

        ``p`` is the conformal p-value of normality (:meth:`score_pvalues`),
        not a posterior probability: it says how unusual an image is among
        normal ones, with ``P(p <= a) <= a`` for a normal image.

        Parameters
        ----------
        X : Features

        Returns
        -------
        proba : ndarray of shape (n_images, 2)
        """
        p = self.score_pvalues(X)
        return np.stack([1 - p, p], axis=1)

    def pvalue_map(self, X):
        """Per-pixel conformal p-values of normality, low where anomalous.

        A pixel's p-value is the share of training images whose map reaches
        its value somewhere: a normal image gets any pixel of p-value at
        most ``a`` with probability at most ``a``.

        Parameters
        ----------
        X : Features

        Returns
        -------
        p : ndarray of shape (n_images, height, width), float32
        """
        return pvalues(self.anomaly_map(X), self.training_map_maxima_).astype(np.float32)

    def _seed(self):
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def __getstate__(self):
        # Fitted tensors travel on the CPU, so a model fitted on a GPU loads
        # and scores on a machine without one; caches are rebuilt on demand,
        # and running statistics (_cache_*) stay in memory (see _resume).
        state = {key: _to_cpu(value) for key, value in without_caches(super().__getstate__()).items()}
        if "device_" in state:
            state["device_"] = torch.device("cpu")
        return state


def _pieces(start, stop, device, cpu_images=1):
    """The images ``start:stop`` as ranges computed at once: ``cpu_images``
    each on a CPU (see :meth:`BaseDetector._iter_batches`), all of them on a GPU."""
    if device.type == "cpu":
        return [range(i, min(i + cpu_images, stop)) for i in range(start, stop, cpu_images)]
    return [range(start, stop)]


class _Batch:
    """A batch's float32 results, which the workers write piece by piece.

    Pieces concatenated by the calling thread once all were done kept the
    workers waiting: 2.8 ms of the 43 that two workers took for 32 of
    CFlowAD's maps.
    """

    def __init__(self, start, stop):
        self.start, self.stop, self.values = start, stop, None
        self._lock = threading.Lock()

    def put(self, piece, out):
        """Write ``out``, the results of the images ``piece``; returns where they are."""
        if len(piece) == self.stop - self.start:
            self.values = out.float()
            return self.values
        with self._lock:
            if self.values is None:
                self.values = out.new_empty((self.stop - self.start, *out.shape[1:]), dtype=torch.float32)
        place = self.values[piece.start - self.start : piece.stop - self.start]
        place.copy_(out)
        return place


def second_pass(batches, expected):
    """Yield ``batches`` again, checking that they hold the ``expected`` images the first pass had."""
    seen = 0
    for batch in batches:
        seen += len(batch)
        if seen > expected:
            break
        yield batch
    if seen != expected:
        raise ValueError(
            f"the training batches held {expected} images when the model learned from them but "
            f"{'more' if seen > expected else seen} when they were scored for the thresholds: a "
            "stream must give the same images each time it is iterated over."
        )


def _reiterable(batches):
    """``batches`` if it can be iterated over more than once, which fit needs."""
    if iter(batches) is batches:
        raise TypeError(
            "fit iterates over the batches twice (statistics, then thresholds), so it takes a "
            "re-iterable of Features (a list, or a FeatureStream), not an iterator or generator."
        )
    return batches


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, nn.Module):
        on_cpu = all(t.device.type == "cpu" for t in value.state_dict().values())
        return value if on_cpu else copy.deepcopy(value).cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
