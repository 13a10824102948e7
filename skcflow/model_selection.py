"""Model selection with the usual anomaly-detection protocol.

Detectors are fitted on defect-free images and evaluated on a test set with
defects. :func:`predefined_split` stacks a train and a test set into one
``X, y`` with a :class:`~sklearn.model_selection.PredefinedSplit`, so that
``GridSearchCV`` and ``cross_validate`` run exactly that protocol.
"""

import numpy as np
from sklearn.model_selection import PredefinedSplit


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
