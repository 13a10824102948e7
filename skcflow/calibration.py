"""Decisions without defect samples: conformal p-values and thresholds.

Every detector keeps its training images' leave-one-out anomaly scores
(``training_scores_``) and the maxima of their maps
(``training_map_maxima_``): each scored as a new normal image would be.
For a new image of score ``s``, the share of training images at least as
anomalous,

    p = (1 + #{i : training_i >= s}) / (n + 1),

is a conformal p-value of normality: for a new normal image, exchangeable
with the training images, ``P(p <= a) <= a`` for every level ``a``. A pixel's
p-value compares its map value with the training maps' maxima, so that a
normal image gets any pixel with ``p <= a`` with probability at most ``a``
too. Flagging ``p <= a`` is flagging scores above :func:`conformal_threshold`.

Needs numpy only: the torch-free runtime uses it as the detectors do.
"""

import math

import numpy as np


def pvalues(scores, training):
    """Conformal p-values of normality of anomaly ``scores`` (any shape).

    Parameters
    ----------
    scores : array-like
        Anomaly scores (higher is more anomalous), e.g. image scores or map
        values.
    training : array-like of shape (n,)
        The training images' leave-one-out scores of the same kind.

    Returns
    -------
    p : ndarray of the shape of ``scores``, float64 in ``(0, 1]``

    Examples
    --------
    >>> from skcflow.calibration import pvalues
    >>> pvalues([0.5, 2.5, 9.0], training=[1.0, 2.0, 3.0])
    array([1.  , 0.5 , 0.25])
    """
    training = np.sort(np.asarray(training, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    at_least = len(training) - np.searchsorted(training, scores, side="left")
    return (1 + at_least) / (len(training) + 1)


def conformal_threshold(training, false_alarm_rate):
    """The anomaly score above which ``p <= false_alarm_rate``.

    Scores above it are flagged; a new normal image is, with probability at
    most ``false_alarm_rate``. With fewer than ``1 / false_alarm_rate - 1``
    training images no score can reach that level, and the threshold is the
    largest training score (nothing scored at most that is flagged).

    Returns
    -------
    threshold : float
        The ``k``-th smallest training score, ``k = ceil((1 - a) (n + 1))``.
    """
    training = np.sort(np.asarray(training, dtype=np.float64))
    n = len(training)
    k = math.ceil((1 - false_alarm_rate) * (n + 1))
    return float(training[min(k, n) - 1])


def contamination_for(training, false_alarm_rate):
    """The ``contamination`` whose quantile threshold is :func:`conformal_threshold`.

    ``np.quantile(-training, c)`` falls exactly on the ``k``-th smallest
    training score for ``c = 1 - (k - 1) / (n - 1)``: a refit with that
    contamination makes the same decisions. Below ``2 / (n + 1)`` the
    threshold is the largest training score, reached only as ``c`` goes to
    0, which the parameter excludes: ``c`` is then 1e-12, which moves the
    threshold by 1e-12 of the gap between the two largest scores.
    """
    n = len(training)
    k = min(math.ceil((1 - false_alarm_rate) * (n + 1)), n)
    return max(1 - (k - 1) / max(n - 1, 1), 1e-12)


def thresholds(training_scores, training_maxima, maps_score_images, contamination=None,
               false_alarm_rate=None, score=None):
    """``(offset, pixel_threshold, contamination)`` for exactly one way of choosing them.

    Parameters
    ----------
    training_scores, training_maxima : array-like of shape (n,)
        The training images' leave-one-out image scores and map maxima.
    maps_score_images : bool
        Whether an image's score is its map's maximum (PaDiM, CFlowAD with
        ``image_score="map"``): the pixel threshold is then the image
        threshold, so an image gets a non-empty mask exactly when it is
        flagged. Otherwise (SPADE, CFlowAD by default) it is the one that
        flags as many training maps.
    contamination : float, default=None
        The share of training images to flag, as a fit's ``contamination``.
    false_alarm_rate : float, default=None
        Flag ``p <= false_alarm_rate`` (:func:`conformal_threshold`); the
        contamination returned is the one a refit would need
        (:func:`contamination_for`).
    score : float, default=None
        Flag image scores above ``score``; the contamination returned is
        None (no refit's contamination gives it in general).
    """
    given = [v is not None for v in (contamination, false_alarm_rate, score)]
    if sum(given) != 1:
        raise ValueError("give exactly one of contamination, false_alarm_rate and score.")
    training_scores = np.asarray(training_scores, dtype=np.float64)
    training_maxima = np.asarray(training_maxima, dtype=np.float64)
    if false_alarm_rate is not None:
        if not 0 < false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must lie in (0, 1); got {false_alarm_rate!r}.")
        image = conformal_threshold(training_scores, false_alarm_rate)
        pixel = image if maps_score_images else conformal_threshold(training_maxima, false_alarm_rate)
        return -image, pixel, contamination_for(training_scores, false_alarm_rate)
    if score is not None:
        score = float(score)
        share = float(np.mean(training_scores > score))
        pixel = score if maps_score_images else float(np.quantile(training_maxima, 1 - share))
        return -score, pixel, None
    if not 0 < contamination <= 0.5:
        raise ValueError(f"contamination must lie in (0, 0.5]; got {contamination!r}.")
    offset = float(np.quantile(-training_scores, contamination))
    # Image scores and maps may differ in scale: the same share of training
    # images gets a non-empty mask as is flagged anomalous.
    pixel = -offset if maps_score_images else float(np.quantile(training_maxima, 1 - contamination))
    return offset, pixel, contamination


def false_alarm_test(n_alarms, n_normal, false_alarm_rate, n_reference):
    """One-sided test of the conformal guarantee on normal images scored against one model.

    The normal images share one set of ``n_reference`` reference scores, so
    their false alarms are not independent: given the reference, the
    false-alarm rate of :func:`conformal_threshold` at level ``a`` is
    ``F ~ Beta(n + 1 - k, k)`` (``k = ceil((1 - a) (n + 1))``, capped at
    ``n``; the distribution of one minus the ``k``-th of ``n`` uniform order
    statistics), with mean at most ``a``, and the count of false alarms
    among ``n_normal`` images is beta-binomial. (A binomial test at rate
    ``a`` ignores ``F``'s spread and rejects a valid guarantee too often.)

    Returns
    -------
    p : float
        ``P(X >= n_alarms)`` for that beta-binomial count: the chance of so
        many false alarms, or more, if the guarantee holds with equality; a
        small value (below 0.05, say) contradicts the guarantee.

    Examples
    --------
    >>> from skcflow.calibration import false_alarm_test
    >>> round(false_alarm_test(2, 20, 0.10, n_reference=200), 3)
    0.593
    """
    k = min(math.ceil((1 - false_alarm_rate) * (n_reference + 1)), n_reference)
    a, b = n_reference + 1 - k, k

    def log_beta(x, y):
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    return float(min(1.0, sum(
        math.comb(n_normal, j) * math.exp(log_beta(j + a, n_normal - j + b) - log_beta(a, b))
        for j in range(n_alarms, n_normal + 1)
    )))
