"""PaDiM: a Gaussian per patch position on multi-scale CNN features.

Defard, Setkov, Loesch and Audigier, "PaDiM: a Patch Distribution Modeling
Framework for Anomaly Detection and Localization", ICPR Workshops 2020.
"""

from numbers import Integral, Real

import torch
# Private, as in scikit-learn's own estimators: parameter constraints have no public API.
from sklearn.utils._param_validation import Interval

from ._fitted import TensorSpec
from .base import BaseDetector, concat_levels, smooth_upsample, split_channels
from .gaussian import PositionMoments, leave_one_out_squared

# On a CPU, the inverse covariances scored at once fit in this much cache,
# so that every image of a batch reuses them instead of streaming them all
# from memory again (3.5x faster for 176 channels at 256 px).
_CPU_CACHE_BYTES = 8 * 2**20


class PaDiM(BaseDetector):
    """PaDiM anomaly detector on :class:`~skcflow.Features`.

    The pyramid's levels are concatenated at the finest level's resolution
    (coarser levels upsampled bilinearly, see
    :func:`~skcflow.base.concat_levels`) and a random subset of
    ``n_features`` channels is kept. Each
    position gets a multivariate Gaussian fitted to the training images'
    vectors there; a test position's anomaly score is its Mahalanobis
    distance to that Gaussian. The map is upsampled bilinearly to the input
    size and smoothed with a Gaussian of ``sigma`` pixels; an image's score
    is the maximum of its map.

    Fitting streams over the training images, accumulating per position the
    sum of vectors and of their outer products in float64, so its memory is
    that of the covariances however many images there are.

    Parameters
    ----------
    n_features : int, default=200
        Channels kept from the concatenated pyramid, drawn at random in
        ``fit`` (the paper's random dimensionality reduction); capped at the
        number of channels. The model holds ``P * n_features**2`` floats.
        The default keeps all 176 channels of the default
        ``efficientnet_lite0`` pyramid: the paper's 100, drawn from
        ResNet-18's 448, cost accuracy on this narrower pyramid (MTD
        magnetic tiles at 256 px: image / pixel AUROC 0.964 / 0.775 with
        all channels, 0.952 / 0.759 with 100).
    reg : float, default=0.01
        ``reg * I`` is added to every covariance, keeping it invertible
        when there are fewer training images than channels.
    sigma : float, default=4.0
        Standard deviation, in input pixels, of the Gaussian smoothing of
        the maps.
    contamination : float, default=0.01
        Expected share of anomalies among the training images; sets
        ``offset_`` and the default pixel threshold from the training
        images' leave-one-out maps (each scored against Gaussians fitted
        without it, in closed form), which new normal images resemble.
    pixel_threshold : float, default=None
        Threshold on the map for :meth:`predict_mask`; ``None`` uses the
        image threshold ``-offset_``.
    batch_size : int, default=32
        Images embedded at once, in fit and when scoring.
    n_jobs : int or None, default=None
        Workers, the calling thread among them, each computing whole images
        on one thread of torch's (see :mod:`skcflow.threads`): ``None`` or
        ``-1`` every core, a positive int that many. Results do not depend
        on it, nor on what else runs on the machine.
    device : str, default="auto"
        ``"auto"`` uses CUDA where available.
    random_state : int, RandomState instance or None, default=None
        Seeds the choice of channels.
    verbose : int, default=0
        Show progress bars when positive.

    Attributes
    ----------
    channels_ : ndarray of shape (d,)
        Indices of the kept channels in the concatenated pyramid, increasing.
    mean_ : torch.Tensor of shape (P, d)
        Mean vector per position, ``P = H_1 * W_1`` positions row by row.
    precision_ : torch.Tensor of shape (P, d, d)
        Inverse of each position's regularised covariance, float32.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    pixel_threshold_ : float
        Threshold used by :meth:`predict_mask`.
    model_size_bytes_ : int
        Size of the means and inverse covariances.
    feature_shapes_ : list of tuple
        ``(D_k, H_k, W_k)`` per level seen in fit.
    device_ : torch.device
        Device the Gaussians live on.

    Examples
    --------
    >>> from skcflow import FeatureExtractor, PaDiM, make_defects
    >>> data = make_defects(n_train=8, n_test=4, image_size=64, random_state=0)
    >>> extractor = FeatureExtractor(image_size=64, device="cpu").fit()
    >>> model = PaDiM(n_features=50, device="cpu", random_state=0)
    >>> model = model.fit(extractor.transform(data.train.images))
    >>> model.anomaly_map(extractor.transform(data.test.images)).shape
    (4, 64, 64)
    >>> tuple(model.precision_.shape)
    (256, 50, 50)
    """

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "reg": [Interval(Real, 0, None, closed="neither")],
        "sigma": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_features=200,
        reg=0.01,
        sigma=4.0,
        contamination=0.01,
        pixel_threshold=None,
        batch_size=32,
        n_jobs=None,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.n_features = n_features
        self.reg = reg
        self.sigma = sigma
        self.contamination = contamination
        self.pixel_threshold = pixel_threshold
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _begin(self, features, in_memory):
        n_channels = sum(dim for dim, _, _ in features.shapes)
        generator = torch.Generator().manual_seed(self._seed())
        chosen = torch.randperm(n_channels, generator=generator)[: self.n_features]
        self.channels_ = chosen.sort().values.numpy()
        _, height, width = features.shapes[0]
        self._cache_moments = PositionMoments(height * width, len(self.channels_), self.device_)

    def _accumulate(self, features):
        for start in range(0, len(features), self.batch_size):
            self._cache_moments.update(self._embed(features[start : start + self.batch_size]))

    def _complete(self):
        moments = self._cache_moments
        self.mean_ = moments.mean().float()
        self.precision_ = torch.empty(len(self.mean_), *moments.outer.shape[1:], device=self.device_)
        for part, factor in moments.cholesky_factors(self.reg):
            self.precision_[part] = torch.cholesky_inverse(factor).float()

    def _resume(self):
        # A saved model keeps the Gaussians, not their float64 sums: the
        # sums are rebuilt from them, exact to the float32 of precision_.
        if "_cache_moments" in vars(self):
            return
        eye = torch.eye(self.precision_.shape[-1], dtype=torch.float64, device=self.device_)
        covariance = torch.cat([torch.linalg.inv(chunk.double()) - self.reg * eye
                                for chunk in self.precision_.split(256)])
        self._cache_moments = PositionMoments.of_gaussians(self.n_train_samples_, self.mean_, covariance)

    def _maps(self):
        """The fitted state's scoring module (:class:`PaDiMMaps`), built once."""
        def build():
            step = None
            if self.device_.type == "cpu":
                step = max(1, _CPU_CACHE_BYTES // (4 * len(self.channels_) ** 2))
            channels = split_channels(self.channels_, [d for d, _, _ in self.feature_shapes_])
            return PaDiMMaps(channels, self.mean_, self.precision_, self.feature_shapes_[0][1:],
                             self.frame_size_, self.sigma, step).to(self.device_)

        return self._cached_maps((id(self.mean_), self.sigma, str(self.device_)), build)

    def _embed(self, features):
        """The kept channels of each image's positions, ``(B, P, d)``."""
        channels = split_channels(self.channels_, [d for d, _, _ in features.shapes])
        return embed(features.maps, channels, self.device_)

    def _batch_maps(self, features):
        return self._maps()(*features.maps)

    def _training_batch_maps(self, features, rows):
        # A training image helped fit the Gaussians it is scored against, so
        # its distances are optimistic and thresholds set on them flag most
        # new normal images; its leave-one-out distances follow in closed form.
        n = self.n_train_samples_
        maps = self._maps()
        squared = maps.squared_distances(*features.maps)
        return maps.to_map(squared if n < 3 else leave_one_out_squared(squared, n))

    def _fitted_tensors(self):
        return [self.mean_, self.precision_]

    def _fitted_tensor_specs(self):
        total = sum(dim for dim, _, _ in self.feature_shapes_)
        dim = min(self.n_features, total)
        _, height, width = self.feature_shapes_[0]
        return {
            **super()._fitted_tensor_specs(),
            "channels_": TensorSpec(
                (dim,), torch.int64, array=True, text=f"increasing channel indices below {total}",
                values=lambda t: bool((t >= 0).all() and (t < total).all() and (t.diff() > 0).all())),
            "mean_": TensorSpec((height * width, dim), torch.float32),
            "precision_": TensorSpec((height * width, dim, dim), torch.float32),
        }


def embed(pyramid, channels, device=None):
    """PaDiM's vectors: the kept channels of each position, ``(N, P, d)``."""
    return concat_levels(pyramid, channels, device).flatten(2).transpose(1, 2)


class PaDiMMaps(torch.nn.Module):
    """A fitted PaDiM's anomaly maps of a feature pyramid, as one module.

    What :class:`PaDiM` scores with and what :func:`skcflow.export_onnx`
    exports: each position's vector of the kept channels, its Mahalanobis
    distance to the position's Gaussian, upsampled and smoothed.

    Parameters
    ----------
    channels : list of torch.Tensor
        Per level, the kept channels (:func:`~skcflow.base.split_channels`).
    mean, precision : torch.Tensor
        ``mean_`` and ``precision_`` of the fitted PaDiM.
    grid, frame_size : tuple of int
        ``(H_1, W_1)`` of the finest level and the frame of the maps.
    sigma : float
        Smoothing of the maps, in frame pixels.
    positions_per_step : int or None
        Positions whose inverse covariances are used at once on a CPU, so
        that they stay in cache for every image of the batch (in exported
        graphs too); None: all.
    """

    def __init__(self, channels, mean, precision, grid, frame_size, sigma, positions_per_step=None):
        super().__init__()
        for k, kept in enumerate(channels):
            self.register_buffer(f"channels_{k}", kept)
        self.n_levels = len(channels)
        self.register_buffer("mean", mean)
        self.register_buffer("precision", precision)
        self.grid, self.frame_size, self.sigma = tuple(grid), tuple(frame_size), sigma
        self.positions_per_step = positions_per_step

    def squared_distances(self, *pyramid):
        """Squared Mahalanobis distances ``(N, P)`` of each image's positions."""
        channels = [getattr(self, f"channels_{k}") for k in range(self.n_levels)]
        x = embed(pyramid, channels, self.mean.device)
        n_positions = x.shape[1]
        step = self.positions_per_step or n_positions
        pieces = []
        for start in range(0, n_positions, step):
            part = slice(start, start + step)
            delta = (x[:, part] - self.mean[part])[:, :, None]
            precision = self.precision[part]
            if torch.compiler.is_exporting():
                # An exported graph's runtime multiplies each image's vector
                # at each position on its own, however many images there are.
                product = torch.matmul(delta, precision)
            else:
                # One product per image here: torch folds the images of a
                # batch into one product, whose rounding depends on its
                # shape, and an image's map must not depend on its batch.
                product = torch.stack([torch.bmm(image, precision) for image in delta])
            pieces.append(product.mul(delta).sum((2, 3)))
        # Rounding can push a distance of about zero below it.
        return torch.cat(pieces, 1).clamp(min=0)

    def to_map(self, squared):
        """Maps ``(N, H_frame, W_frame)`` of squared distances ``(N, P)``."""
        maps = squared.sqrt().view(-1, *self.grid)
        return smooth_upsample(maps, self.frame_size, self.sigma)

    def forward(self, *pyramid):
        """Anomaly maps ``(N, H_frame, W_frame)``, float32, of the pyramid's level maps."""
        return self.to_map(self.squared_distances(*pyramid))
