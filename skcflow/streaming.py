"""Training sets larger than memory: images read and encoded a batch at a time.

A :class:`FeatureStream` yields :class:`~skcflow.Features` batch by batch,
reading image files (or taking image batches) only as it goes, and can be
iterated over as often as a fit needs: once to accumulate the detector's
statistics, once more to score the training images for its thresholds. The
detectors' ``fit`` takes one, and :class:`~skcflow.AnomalyPipeline`'s ``fit``
builds one from a folder, a list of image files or a re-iterable of image
batches, so that memory stays that of a batch however many images there are.
"""

import ctypes
import sys

import numpy as np

from .geometry import frame_shape
from .readers import is_paths, list_files, read_images


def is_stream(X):
    """Whether ``X`` is streamed rather than held in memory: files, or batches of images."""
    if is_paths(X):
        return True
    if isinstance(X, (list, tuple)):
        return bool(X) and np.ndim(X[0]) == 4
    return not isinstance(X, np.ndarray) and not hasattr(X, "images") and hasattr(X, "__iter__")


class FeatureStream:
    """Features of a training set, one batch of images at a time.

    Parameters
    ----------
    extractor : FeatureExtractor
        Fitted.
    images : folder, file, list of files, or re-iterable of image batches
        Files are read into the extractor's frame (see
        :func:`skcflow.load_images`) ``batch_size`` at a time; image batches
        are arrays of shape ``(n, H, W, 3)`` (a list of them, or any object
        whose ``__iter__`` starts over each time).
    batch_size : int, default=None
        Files read at once; ``None`` uses the extractor's ``batch_size``.
    errors : {"raise", "skip"}, default="raise"
        What to do with unreadable files, as in :func:`skcflow.load_images`.

    Examples
    --------
    >>> import numpy as np
    >>> from skcflow import FeatureExtractor, PaDiM, make_defects
    >>> from skcflow.streaming import FeatureStream
    >>> data = make_defects(n_train=12, n_test=2, image_size=64, random_state=0)
    >>> batches = [data.train.images[:6], data.train.images[6:]]
    >>> extractor = FeatureExtractor(image_size=64, device="cpu").fit(batches[0])
    >>> model = PaDiM(n_features=20, device="cpu", random_state=0)
    >>> model.fit(FeatureStream(extractor, batches)).n_train_samples_
    12
    """

    def __init__(self, extractor, images, batch_size=None, errors="raise"):
        if not is_paths(images) and iter(images) is images:
            raise TypeError(
                "a FeatureStream is iterated over more than once, so it takes a folder, files, or "
                "a re-iterable of image batches (a list), not an iterator or generator."
            )
        self.extractor, self.images = extractor, images
        self.batch_size, self.errors = batch_size, errors

    def image_batches(self):
        """Yield the images, a batch at a time."""
        if not is_paths(self.images):
            yield from self.images
            return
        paths, _ = list_files(self.images)
        size = self.batch_size or self.extractor.batch_size
        # The extractor's parameters, not its fitted state: a pipeline reads
        # the first batch to fit the extractor on it.
        frame, keep_aspect = frame_shape(self.extractor.image_size), self.extractor.keep_aspect
        for start in range(0, len(paths), size):
            yield read_images(paths[start : start + size], frame, keep_aspect, self.errors)[0]

    def __iter__(self):
        for images in self.image_batches():
            yield self.extractor.transform(images)
            _give_back_freed_memory()


def _give_back_freed_memory():
    """Return the memory freed by a batch's work to the operating system, where the C library allows.

    glibc keeps freed memory in the pool of the thread that used it, and
    the small results a batch leaves (scores, a model's sums) pin the pools'
    tops: without this, a stream of 3,000 images left a CFlowAD fit holding
    1.6 GB more than one of 100 (``benchmarks/results/scale.md``).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, for one)
        return None


_MALLOC_TRIM = _malloc_trim()
