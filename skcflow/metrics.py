"""Evaluation metrics and scikit-learn scorers for visual anomaly detection.

Three numbers are reported throughout skcflow:

- :func:`image_auroc`: ROC AUC of one anomaly score per image (detection);
- :func:`pixel_auroc`: ROC AUC over all pixels of all images (localisation);
- :func:`aupro`: normalised area under the per-region overlap curve up to a
  false positive rate limit, as defined for MVTec AD (localisation, with every
  defect counting equally whatever its size).

Conventions shared by all of them: anomaly scores and anomaly maps are higher
for more anomalous inputs; ground truth is binary (``bool`` or 0/1, with 1
meaning anomalous); arrays may be NumPy arrays or torch tensors.

:func:`get_scorer` wraps the metrics as ``scorer(estimator, X, y)`` callables
for ``GridSearchCV(scoring=...)`` and ``cross_validate(scoring=...)``.
"""

import math

import numpy as np
import torch
from scipy import ndimage
from sklearn.pipeline import Pipeline

__all__ = ["aupro", "get_scorer", "get_scorer_names", "image_auroc", "pixel_auroc"]

# Regions are 8-connected inside an image and never span two images. A 3-D
# structuring element that only connects pixels of the same slice lets a single
# ``ndimage.label`` call label a whole stack of masks.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


def _to_numpy(x):
    """Return ``x`` as a NumPy array, accepting torch tensors on any device."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # NumPy has no bfloat16, which autocast may produce.
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _check_binary(y, name):
    """Return ``y`` as a boolean array, refusing anything but bool or 0/1."""
    y = _to_numpy(y)
    if y.dtype == bool:
        return y
    if y.dtype.kind in "iuf":
        invalid = (y != 0) & (y != 1)
        if not invalid.any():
            return y != 0
        found = f"values {np.unique(y[invalid])[:5]}"
    else:
        found = f"dtype {y.dtype}"
    raise ValueError(
        f"{name} must be binary (bool, or 0 and 1 with 1 meaning anomalous); "
        f"found {found}. Binarise it first, e.g. `{name} > 0`."
    )


def _check_scores(scores, name):
    """Return ``scores`` as a finite float array of at least single precision."""
    scores = _to_numpy(scores)
    if scores.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers; got dtype {scores.dtype}.")
    # Promote only as far as needed to hold the values exactly: float32 input
    # stays float32, which sorts faster, especially in _sort_descending.
    scores = scores.astype(np.result_type(scores.dtype, np.float32), copy=False)
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return scores


def _check_pixel_inputs(masks, maps):
    """Validate ground-truth masks and anomaly maps of the same shape.

    Returns them as arrays of shape (n_images, height, width): a boolean one
    and a float one.
    """
    masks = _check_binary(masks, "masks")
    maps = _check_scores(maps, "maps")
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks and maps must have the same shape; got {masks.shape} and "
            f"{maps.shape}."
        )
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3 or masks.size == 0:
        raise ValueError(
            "masks and maps must be non-empty arrays of shape (n_images, "
            f"height, width) or (height, width); got shape {masks.shape}."
        )
    return masks, maps


def _check_both_classes(y, name, unit):
    """Refuse ground truth that is all normal or all anomalous."""
    n_anomalous = np.count_nonzero(y)
    if n_anomalous == 0 or n_anomalous == y.size:
        only = "anomalous" if n_anomalous else "normal"
        raise ValueError(
            f"{name} must contain both normal and anomalous {unit}; all "
            f"{y.size} are {only}, so the metric is undefined."
        )


def _sort_descending(values, labels):
    """Sort ``values`` in decreasing order, carrying integer ``labels`` along.

    Returns
    -------
    labels : ndarray
        ``labels`` in the sorted order; ties are in arbitrary order.
    ends : ndarray
        Index of the last element of each group of tied values, ascending.
    """
    if values.dtype == np.float32:
        # One np.sort of uint64 keys (value bits above, label below) is about
        # 2.5 times faster than np.argsort and gathering. Adding zero turns -0.0
        # into +0.0 so that both zeros tie; the bit mapping makes unsigned
        # order agree with float order.
        bits = (values + np.float32(0)).view(np.uint32)
        bits = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
        keys = np.sort((bits.astype(np.uint64) << 32) | labels.astype(np.uint64))[::-1]
        groups = keys >> 32
        labels = (keys & 0xFFFFFFFF).astype(np.intp)
    else:
        order = np.argsort(values)[::-1]
        groups = values[order]
        labels = labels[order]
    ends = np.append(np.flatnonzero(groups[1:] != groups[:-1]), len(groups) - 1)
    return labels, ends


def _partial_area(x, y, x_max):
    """Trapezoid area under the curve through (0, 0) and the points (x, y).

    ``x`` is nondecreasing and reaches ``x_max``. The curve is cut at
    ``x_max``, interpolating linearly between the points around it.
    """
    x = np.concatenate(([0.0], x))
    y = np.concatenate(([0.0], y))
    end = np.searchsorted(x, x_max, side="left")
    x, y = x[: end + 1], y[: end + 1].copy()
    if x[end] > x_max:
        slope = (y[end] - y[end - 1]) / (x[end] - x[end - 1])
        y[end] = y[end - 1] + slope * (x_max - x[end - 1])
        x = np.append(x[:end], x_max)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) / 2)


def _roc_auc(y_true, scores):
    """Exact ROC AUC of validated, flat, two-class inputs.

    Computed as the Mann-Whitney statistic, the fraction of (anomalous, normal)
    pairs in the right order with ties counting half, which equals the
    trapezoid area under the ROC curve and needs no sort carrying labels.
    """
    normal = np.sort(scores[~y_true])
    # Sorted queries keep the binary searches cache-friendly.
    anomalous = np.sort(scores[y_true])
    n_below = np.searchsorted(normal, anomalous, side="left").sum()
    n_not_above = np.searchsorted(normal, anomalous, side="right").sum()
    return float((n_below + n_not_above) / (2 * normal.size * anomalous.size))


def image_auroc(y_true, scores):
    """Area under the ROC curve of image-level anomaly scores.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        Ground truth: 1 (or True) for anomalous images, 0 for normal ones.
        Both classes must be present.
    scores : array-like of shape (n_images,)
        Anomaly scores, higher for more anomalous images. Note that
        scikit-learn's ``score_samples`` is higher for *normal* samples:
        pass its negation.

    Returns
    -------
    float
        ROC AUC in [0, 1]; tied scores count half, as in
        :func:`sklearn.metrics.roc_auc_score`, which gives the same value.

    Raises
    ------
    ValueError
        If ``y_true`` is not binary or has a single class, if the shapes
        differ, or if ``scores`` contains NaN or infinity.

    Examples
    --------
    >>> from skcflow.metrics import image_auroc
    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y_true = _check_binary(y_true, "y_true")
    scores = _check_scores(scores, "scores")
    if y_true.ndim != 1 or y_true.shape != scores.shape:
        raise ValueError(
            "y_true and scores must be 1-D arrays of the same length; got shapes "
            f"{y_true.shape} and {scores.shape}."
        )
    _check_both_classes(y_true, "y_true", "images")
    return _roc_auc(y_true, scores)


def pixel_auroc(masks, maps):
    """Area under the ROC curve over all pixels of all images.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width) or (height, width)
        Ground-truth masks: 1 (or True) for anomalous pixels, 0 for normal
        ones. Both must be present somewhere.
    maps : array-like of the same shape as ``masks``
        Anomaly maps, higher for more anomalous pixels.

    Returns
    -------
    float
        ROC AUC in [0, 1] of the pixels pooled over all images; tied values
        count half. It equals ``sklearn.metrics.roc_auc_score(masks.ravel(),
        maps.ravel())``, computed several times faster.

    Raises
    ------
    ValueError
        If the shapes differ, the masks are not binary or lack one class, or
        the maps contain NaN or infinity.

    Examples
    --------
    >>> import numpy as np
    >>> from skcflow.metrics import pixel_auroc
    >>> masks = np.array([[[0, 0], [0, 1]], [[0, 0], [0, 0]]])
    >>> maps = np.array([[[0.1, 0.2], [0.3, 0.9]], [[0.1, 0.5], [0.2, 0.1]]])
    >>> pixel_auroc(masks, maps)
    1.0
    """
    masks, maps = _check_pixel_inputs(masks, maps)
    _check_both_classes(masks, "masks", "pixels")
    return _roc_auc(masks.ravel(), maps.ravel())


def aupro(masks, maps, fpr_limit=0.3):
    """Normalised area under the per-region overlap (PRO) curve.

    This is the official MVTec AD definition (Bergmann et al., "The MVTec
    Anomaly Detection Dataset", IJCV 2021, and its evaluation code):

    - ground-truth regions are the 8-connected components of each mask;
    - at a threshold ``t``, a pixel is predicted anomalous when its map value
      is ``>= t``; the overlap of a region is the fraction of its pixels
      predicted anomalous, and PRO(t) is the mean overlap over all regions of
      all images, so that small and large defects weigh the same;
    - FPR(t) is the fraction of normal pixels (``mask == 0``, in all images,
      including the normal part of defective ones) predicted anomalous;
    - every distinct map value is a threshold, so tied pixels switch
      together; the curve starts at (0, 0), the threshold above every value;
    - the curve is integrated over FPR from 0 to ``fpr_limit`` with the
      trapezoid rule, the point at ``fpr_limit`` being interpolated linearly
      between its neighbours, and the area is divided by ``fpr_limit``.

    The reference code published with the CFLOW-AD paper computes something
    else: it uses 1000 evenly spaced thresholds, and min-max rescales the FPRs
    below the limit before integrating instead of interpolating at the limit
    and dividing by it. skcflow follows the official definition, so its
    numbers compare with the official MVTec tables but not exactly with
    numbers produced by that code.

    All thresholds are evaluated exactly with one sort of the pixels (no loop
    over thresholds or regions); pixels below the threshold at which FPR
    reaches ``fpr_limit`` are skipped.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width) or (height, width)
        Ground-truth masks: 1 (or True) for anomalous pixels, 0 for normal
        ones. At least one anomalous region and one normal pixel are needed.
    maps : array-like of the same shape as ``masks``
        Anomaly maps, higher for more anomalous pixels.
    fpr_limit : float, default=0.3
        Upper integration limit of the false positive rate, in (0, 1].

    Returns
    -------
    float
        AUPRO in [0, 1]. A perfect map scores 1; a map with no information
        (constant) scores ``fpr_limit / 2``.

    Raises
    ------
    ValueError
        If the masks contain no anomalous region or no normal pixel, if the
        shapes differ, the masks are not binary, the maps contain NaN or
        infinity, or ``fpr_limit`` is outside (0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from skcflow.metrics import aupro
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[0, :2, :2] = True  # one region in each image
    >>> masks[1, 2:, 2:] = True
    >>> maps = np.random.default_rng(0).random((2, 4, 4))
    >>> aupro(masks, maps + masks)  # both defects above all normal pixels
    1.0
    >>> maps[1] -= 2 * masks[1]  # the second one now below all of them
    >>> aupro(masks, maps + masks)
    0.5
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}.")
    masks, maps = _check_pixel_inputs(masks, maps)
    _check_both_classes(masks, "masks", "pixels")
    regions, n_regions = ndimage.label(masks, structure=_REGION_STRUCTURE)
    regions, maps = regions.ravel(), maps.ravel()
    sizes = np.bincount(regions)
    n_normal = sizes[0]

    # The integral only depends on thresholds down to the first one whose FPR
    # reaches fpr_limit, i.e. the n_needed-th largest normal value; one extra
    # normal pixel absorbs rounding in fpr_limit * n_normal.
    n_needed = min(n_normal, math.ceil(fpr_limit * n_normal) + 1)
    normal_values = maps[regions == 0]
    cutoff = np.partition(normal_values, n_normal - n_needed)[n_normal - n_needed]
    kept = maps >= cutoff
    labels, ends = _sort_descending(maps[kept], regions[kept])

    # Each region weighs 1 / n_regions in PRO, spread evenly over its pixels.
    weights = 1.0 / (n_regions * sizes)
    weights[0] = 0.0
    pro = np.cumsum(weights[labels])[ends]
    fpr = np.cumsum(labels == 0)[ends] / n_normal
    # Summing a million weights can overshoot 1 by a rounding error.
    return float(min(_partial_area(fpr, pro, fpr_limit) / fpr_limit, 1.0))


def _anomaly_maps(estimator, X):
    """Anomaly maps of ``X`` from an estimator or a Pipeline ending in one."""
    if hasattr(estimator, "anomaly_map"):
        return estimator.anomaly_map(X)
    if isinstance(estimator, Pipeline):
        # Pipeline only forwards methods scikit-learn knows, so run the
        # transformers here and ask the final step.
        Xt = estimator[:-1].transform(X) if len(estimator) > 1 else X
        return _anomaly_maps(estimator[-1], Xt)
    raise TypeError(
        f"{type(estimator).__name__} has no anomaly_map method, which the "
        "pixel-level scorers need."
    )


def _check_ground_truth(y, needs_masks, scorer_name):
    """Return scorer ground truth as 1-D labels or 3-D masks (boolean)."""
    if y is None:
        raise ValueError(
            f"The {scorer_name} scorer needs ground truth y: image labels of "
            "shape (n_images,) or masks of shape (n_images, height, width)."
        )
    y = _check_binary(y, "y")
    if y.ndim == 3 or (y.ndim == 1 and not needs_masks):
        return y
    if y.ndim == 1:
        raise ValueError(
            f"The {scorer_name} scorer needs ground-truth masks of shape "
            "(n_images, height, width) as y; got 1-D image labels."
        )
    raise ValueError(
        "y must be image labels of shape (n_images,) or masks of shape "
        f"(n_images, height, width); got shape {y.shape}."
    )


def _masks_and_maps(estimator, X, y, scorer_name):
    """Ground-truth masks and the estimator's maps of X, at the mask size."""
    masks = _check_ground_truth(y, True, scorer_name)
    maps = _check_scores(_anomaly_maps(estimator, X), "anomaly_map output")
    if maps.ndim == 3 and maps.shape[1:] != masks.shape[1:]:
        # Extractors often work at a lower resolution than the masks.
        maps = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(maps))[:, None],
            size=masks.shape[1:],
            mode="bilinear",
            align_corners=False,
        )[:, 0].numpy()
    return masks, maps


def _image_auroc_scorer(estimator, X, y):
    labels = _check_ground_truth(y, False, "image_auroc")
    labels = labels.reshape(len(labels), -1).any(axis=1)
    # scikit-learn's score_samples is higher for normal samples.
    scores = -_check_scores(estimator.score_samples(X), "score_samples output")
    return image_auroc(labels, scores)


def _pixel_auroc_scorer(estimator, X, y):
    return pixel_auroc(*_masks_and_maps(estimator, X, y, "pixel_auroc"))


def _aupro_scorer(estimator, X, y):
    return aupro(*_masks_and_maps(estimator, X, y, "aupro"))


_SCORERS = {
    "image_auroc": _image_auroc_scorer,
    "pixel_auroc": _pixel_auroc_scorer,
    "aupro": _aupro_scorer,
}


def get_scorer_names():
    """Names accepted by :func:`get_scorer`.

    Returns
    -------
    list of str
        The names, sorted.

    Examples
    --------
    >>> from skcflow.metrics import get_scorer_names
    >>> get_scorer_names()
    ['aupro', 'image_auroc', 'pixel_auroc']
    """
    return sorted(_SCORERS)


def get_scorer(name):
    """Scorer for scikit-learn model selection.

    The scorer is a callable ``scorer(estimator, X, y)`` returning a float,
    higher is better, usable as ``GridSearchCV(scoring=scorer)`` or in
    ``cross_validate(scoring={"aupro": scorer, ...})``.

    ``y`` is either image labels of shape (n_images,) (1 = anomalous) or
    ground-truth masks of shape (n_images, height, width); an image is
    anomalous when its mask has any positive pixel.

    - ``"image_auroc"``: :func:`image_auroc` of ``-estimator.score_samples(X)``
      (scikit-learn's ``score_samples`` is higher for normal samples).
      Accepts labels or masks.
    - ``"pixel_auroc"`` and ``"aupro"``: :func:`pixel_auroc` and
      :func:`aupro` (with ``fpr_limit=0.3``) of ``estimator.anomaly_map(X)``,
      which is higher for anomalous pixels. They need masks. For a
      :class:`~sklearn.pipeline.Pipeline` without ``anomaly_map``, ``X`` goes
      through the transformers and the final step's ``anomaly_map`` is used.
      Maps whose height and width differ from the masks' are resized to the
      mask size by bilinear interpolation
      (``torch.nn.functional.interpolate``, ``align_corners=False``).

    Parameters
    ----------
    name : {"image_auroc", "pixel_auroc", "aupro"}
        Metric to score with.

    Returns
    -------
    callable
        ``scorer(estimator, X, y) -> float``.

    Raises
    ------
    ValueError
        If ``name`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import BaseEstimator
    >>> from skcflow.metrics import get_scorer
    >>> class MaxPixel(BaseEstimator):
    ...     def fit(self, X, y=None):
    ...         return self
    ...     def anomaly_map(self, X):
    ...         return X
    ...     def score_samples(self, X):
    ...         return -X.max(axis=(1, 2))
    >>> X = np.zeros((4, 8, 8))
    >>> masks = np.zeros((4, 8, 8), dtype=bool)
    >>> masks[2:, 3:5, 3:5] = True
    >>> X[masks] = 1.0
    >>> detector = MaxPixel().fit(X)
    >>> get_scorer("image_auroc")(detector, X, masks.any(axis=(1, 2)))
    1.0
    >>> get_scorer("aupro")(detector, X, masks)
    1.0
    """
    try:
        return _SCORERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown scorer {name!r}; choose one of {get_scorer_names()}."
        ) from None
