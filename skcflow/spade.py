"""SPADE: nearest-neighbour anomaly detection on a feature pyramid.

Cohen and Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid
Correspondences", arXiv:2005.02357, 2020.
"""

from numbers import Integral, Real

import torch
# Private, as in scikit-learn's own estimators: parameter constraints have no public API.
from sklearn.utils._param_validation import Interval

from ._fitted import TensorSpec
from .base import BaseDetector, concat_levels, smooth_upsample

# Entries of a block of query-to-gallery distances computed at once (16 MiB
# in float32), whatever the image size.
_BLOCK = 2**22


class SPADE(BaseDetector):
    """SPADE anomaly detector on :class:`~skcflow.Features`.

    Every image is summarised by the global average of its deepest level;
    its anomaly score is the mean distance to its ``k`` nearest training
    images in that space, as in the paper (not the maximum of the map).
    For the map, each position's vector of the concatenated pyramid (levels
    upsampled bilinearly to the finest one) is compared with every position of those
    ``k`` training images, which aligns the image with its neighbours
    wherever their parts lie; the distance to the nearest is upsampled
    bilinearly to the input size and smoothed with a Gaussian of ``sigma``
    pixels.

    The fitted state is the gallery itself: the pooled vectors and the
    pyramid vectors of every position of every training image. The training
    images' thresholds are computed leave-one-out, since an image's nearest
    neighbour in the gallery would be itself.

    Parameters
    ----------
    k : int, default=5
        Nearest training images per test image; capped at the number of
        training images less one.
    sigma : float, default=4.0
        Standard deviation, in input pixels, of the Gaussian smoothing of
        the maps.
    contamination : float, default=0.01
        Expected share of anomalies among the training images; sets
        ``offset_`` and the default pixel threshold.
    pixel_threshold : float, default=None
        Threshold on the map for :meth:`predict_mask`; ``None`` uses the
        ``1 - contamination`` quantile of the training maps' maxima, so that
        about as many images get a mask as are predicted anomalous.
    batch_size : int, default=32
        Images scored at once.
    n_jobs : int or None, default=None
        Workers, the calling thread among them, each computing whole images
        on one thread of torch's (see :mod:`skcflow.threads`): ``None`` or
        ``-1`` every core, a positive int that many. Results do not depend
        on it, nor on what else runs on the machine.
    device : str, default="auto"
        ``"auto"`` uses CUDA where available.
    verbose : int, default=0
        Show progress bars when positive.

    Attributes
    ----------
    pooled_ : torch.Tensor of shape (n_train, D_K)
        Average-pooled deepest level of each training image.
    gallery_ : torch.Tensor of shape (n_train, P, D)
        Concatenated pyramid vector of each position (``P = H_1 * W_1``, row
        by row) of each training image.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    pixel_threshold_ : float
        Threshold used by :meth:`predict_mask`.
    model_size_bytes_ : int
        Size of the gallery.
    feature_shapes_ : list of tuple
        ``(D_k, H_k, W_k)`` per level seen in fit.
    device_ : torch.device
        Device the gallery lives on.

    Examples
    --------
    >>> from skcflow import FeatureExtractor, SPADE, make_defects
    >>> data = make_defects(n_train=8, n_test=4, image_size=64, random_state=0)
    >>> extractor = FeatureExtractor(image_size=64, device="cpu").fit()
    >>> model = SPADE(k=3, device="cpu").fit(extractor.transform(data.train.images))
    >>> model.anomaly_map(extractor.transform(data.test.images)).shape
    (4, 64, 64)
    >>> tuple(model.gallery_.shape)
    (8, 256, 176)
    """

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        "k": [Interval(Integral, 1, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        k=5,
        sigma=4.0,
        contamination=0.01,
        pixel_threshold=None,
        batch_size=32,
        n_jobs=None,
        device="auto",
        verbose=0,
    ):
        self.k = k
        self.sigma = sigma
        self.contamination = contamination
        self.pixel_threshold = pixel_threshold
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.device = device
        self.verbose = verbose

    def _begin(self, features, in_memory):
        self._cache_pooled, self._cache_gallery = [], []

    def _accumulate(self, features):
        # Batch by batch: the gallery is the only full-size copy.
        for start in range(0, len(features), self.batch_size):
            batch = features[start : start + self.batch_size]
            self._cache_pooled.append(_pool(batch).to(self.device_))
            embedding = concat_levels(batch.maps, device=self.device_)
            self._cache_gallery.append(embedding.flatten(2).transpose(1, 2))

    def _complete(self):
        if self.n_train_samples_ < 2:
            raise ValueError(
                "SPADE needs at least 2 training images: its thresholds compare "
                "each training image with the others."
            )
        self.pooled_ = torch.cat(self._cache_pooled)
        self.gallery_ = torch.cat(self._cache_gallery)
        # The gallery grows by appending: the next update starts from it.
        self._cache_pooled, self._cache_gallery = [self.pooled_], [self.gallery_]

    def _resume(self):
        if "_cache_gallery" not in vars(self):
            self._cache_pooled, self._cache_gallery = [self.pooled_], [self.gallery_]

    def _neighbours(self, features, rows=None):
        """Distances to, and indices of, each image's nearest training images.

        ``rows`` are the images' own indices in the gallery, when they are
        training images, to leave them out.
        """
        # Direct differences rather than the matrix-product form, so that an
        # image's distances do not depend on the batch it comes in.
        distances = torch.cdist(
            _pool(features).to(self.device_), self.pooled_,
            compute_mode="donot_use_mm_for_euclid_dist",
        )
        if rows is not None:
            distances[torch.arange(len(distances)), torch.as_tensor(rows)] = torch.inf
        k = min(self.k, len(self.pooled_) - 1)
        return distances.topk(k, dim=1, largest=False)

    def _batch_scores(self, features, rows=None):
        return self._neighbours(features, rows).values.mean(1)

    def _batch_maps(self, features, rows=None):
        neighbours = self._neighbours(features, rows).indices.tolist()
        queries = concat_levels(features.maps, device=self.device_)
        n_images, _, height, width = queries.shape
        queries = queries.flatten(2).transpose(1, 2)
        distances = torch.stack([
            _nearest_distances(query, [self.gallery_[i] for i in near])
            for query, near in zip(queries, neighbours)
        ])
        maps = distances.view(n_images, height, width)
        return smooth_upsample(maps, self.frame_size_, self.sigma)

    # The training images' rows name their gallery entries, which they must
    # not find as their own neighbours.
    def _training_batch_maps(self, features, rows):
        return self._batch_maps(features, rows)

    def _training_batch(self, features, rows):
        maxima = self._training_batch_maps(features, rows).flatten(1).amax(1)
        return torch.stack([self._batch_scores(features, rows), maxima], 1)

    def _fitted_tensors(self):
        return [self.pooled_, self.gallery_]

    def _fitted_tensor_specs(self):
        _, height, width = self.feature_shapes_[0]
        dim = sum(d for d, _, _ in self.feature_shapes_)
        n = self.n_train_samples_
        return {
            **super()._fitted_tensor_specs(),
            "pooled_": TensorSpec((n, self.feature_shapes_[-1][0]), torch.float32),
            "gallery_": TensorSpec((n, height * width, dim), torch.float32),
        }


def _pool(features):
    """Global average of the deepest level, ``(n_images, D_K)``."""
    return features.maps[-1].mean((2, 3))


def _nearest_distances(queries, galleries):
    """Euclidean distance from each query row to its nearest gallery row.

    The nearest row is found with the matrix-product form of the squared
    distance, fast but inexact by cancellation; the distance to it is then
    recomputed from the difference, so that small distances stay accurate.
    """
    best = torch.full((len(queries),), torch.inf, device=queries.device)
    nearest = torch.empty_like(queries)
    step = max(1, _BLOCK // len(queries))
    for gallery in galleries:
        for chunk in gallery.split(step):
            # |query|^2 is the same for every candidate: left out of the argmin.
            partial = torch.addmm((chunk * chunk).sum(1), queries, chunk.T, alpha=-2)
            value, index = partial.min(1)
            closer = value < best
            best = torch.where(closer, value, best)
            nearest[closer] = chunk[index[closer]]
    return (queries - nearest).norm(dim=1)
