"""Model selection with the usual anomaly-detection protocol.

Detectors are fitted on defect-free images and evaluated on a test set with
defects. :func:`predefined_split` stacks a train and a test set into one
``X, y`` with a :class:`~sklearn.model_selection.PredefinedSplit`, so that
``GridSearchCV`` and ``cross_validate`` run exactly that protocol. Without
any defective image, :func:`synthetic_split` makes the test set from good
images kept out of the fit, each also with a synthetic defect pasted on
(:func:`~skcflow.datasets.paste_defects`).
"""

import numpy as np
from sklearn.model_selection import PredefinedSplit
from sklearn.utils import check_random_state

from .datasets import paste_defects


def predefined_split(train, test):
    """Stack a train and a test set for the fit-on-train, score-on-test protocol.

    Parameters
    ----------
    train, test : Bunch
        As returned by :func:`~skcflow.load_mvtec` or :func:`~skcflow.make_defects`
        (``images`` and ``masks``).

    Returns
    -------
    X : ndarray of shape (n_train + n_test, H, W, 3)
        The images, train first.
    y : ndarray of shape (n_train + n_test, H, W) or (n_train + n_test,)
        Ground-truth masks (the image label is whether a mask has a positive
        pixel), or the image labels where the test set has no masks
        (``masks=None``; the pixel scorers then say they need masks);
        detectors fit only on the normal samples of a training fold.
    cv : PredefinedSplit
        One split: train on ``train``, evaluate on ``test``.

    Examples
    --------
    >>> from skcflow import make_defects
    >>> from skcflow.model_selection import predefined_split
    >>> data = make_defects(n_train=6, n_test=4, image_size=32, random_state=0)
    >>> X, y, cv = predefined_split(data.train, data.test)
    >>> X.shape, y.shape, cv.get_n_splits()
    ((10, 32, 32, 3), (10, 32, 32), 1)
    """
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"train images are {train.images.shape[1:]} but test images are "
            f"{test.images.shape[1:]}: load both at the same image_size."
        )
    X = np.concatenate([train.images, test.images])
    if test.masks is None:
        y = np.concatenate([np.zeros(len(train.images), dtype=int), test.target])
    else:
        y = np.concatenate([train.masks, test.masks])
    fold = np.concatenate([np.full(len(train.images), -1), np.zeros(len(test.images), dtype=int)])
    return X, y, PredefinedSplit(fold)


def synthetic_split(images, validation=0.2, random_state=None):
    """Model selection from good images alone: a validation set with synthetic defects.

    A share of the good images is kept out of the fit; the validation set
    is those images as they are (normal) and once more, each with a
    synthetic defect of exact mask (:func:`~skcflow.datasets.paste_defects`),
    so that the image-AUROC, pixel-AUROC and AUPRO scorers can rank
    candidate detectors and parameters with ``GridSearchCV``. How well that
    ranking agrees with real defects' is measured in
    ``benchmarks/results/selection.md``.

    Parameters
    ----------
    images : ndarray of shape (n, H, W, 3)
        Good images.
    validation : float or int, default=0.2
        Share (or number) of the images kept out of the fit.
    random_state : int, RandomState instance or None, default=None
        Chooses the validation images and draws the defects.

    Returns
    -------
    X : ndarray of shape (n + n_validation, H, W, 3)
        The images to fit on, then the validation images, then their
        defective copies.
    y : ndarray of shape (n + n_validation, H, W)
        Masks: empty but for the defective copies'.
    cv : PredefinedSplit
        One split: fit on the kept images, score on the validation set.

    Examples
    --------
    >>> from skcflow import make_defects
    >>> from skcflow.model_selection import synthetic_split
    >>> good = make_defects(n_train=10, n_test=1, image_size=32, random_state=0).train.images
    >>> X, y, cv = synthetic_split(good, validation=0.3, random_state=0)
    >>> X.shape, int(y.reshape(len(y), -1).any(1).sum()), cv.get_n_splits()
    ((13, 32, 32, 3), 3, 1)
    """
    images = np.asarray(images)
    rng = check_random_state(random_state)
    n = len(images)
    n_validation = validation if isinstance(validation, (int, np.integer)) else round(validation * n)
    if not 1 <= n_validation < n:
        raise ValueError(f"validation={validation!r} keeps {n_validation} of {n} images out of the "
                         "fit; keep at least one out and one in.")
    order = rng.permutation(n)
    fit, held_out = np.sort(order[n_validation:]), np.sort(order[:n_validation])
    pasted = paste_defects(images[held_out], random_state=rng)
    X = np.concatenate([images[fit], images[held_out], pasted.images])
    empty = np.zeros((len(fit) + n_validation, *images.shape[1:3]), dtype=np.uint8)
    y = np.concatenate([empty, pasted.masks])
    fold = np.concatenate([np.full(len(fit), -1), np.zeros(2 * n_validation, dtype=int)])
    return X, y, PredefinedSplit(fold)
