"""CFLOW-AD: conditional normalizing flows on multi-scale CNN features.

Gudovskiy, Ishizaka and Kozuka, "CFLOW-AD: Real-Time Unsupervised Anomaly
Detection with Localization via Conditional Normalizing Flows", WACV 2022.

Where this implementation departs from the paper's reference code, the
benchmarks in ``benchmarks/`` chose (``results/levels.md`` measures each
choice on MVTec AD bottle and MTD magnetic tiles; the paper's setting in
brackets):

- ``whiten=True`` [False]: each position's features are whitened by a
  Gaussian fitted there (its covariance shrunk towards the level's average,
  Ledoit-Wolf) before the flow, so the flow refines a per-position Gaussian
  instead of learning every position's statistics from a positional
  encoding;
- ``neighborhood=3`` [1]: each feature vector is averaged with its
  neighbours first (PatchCore's local aggregation), so it describes a patch;
- ``n_levels="auto"`` [every level]: the paper treats the number of
  pooling layers as a hyperparameter; the finest level sharpens objects'
  maps and adds more noise than signal on textured surfaces, so in a
  pipeline the levels kept are chosen on synthetic defects pasted on
  training images (on features alone: the two coarsest);
- ``n_coupling_layers=2`` [8], subnets 32 wide [``2 * (D_k / 2 +
  128)``] and 250 steps at a learning rate of 5e-4 [the reference code
  trains for epochs at 2e-4]: the whitened flow has less to learn, and
  this decoder keeps the accuracy of the reference one at a small part
  of the cost (see ``n_coupling_layers`` and ``hidden_dim``);
- ``max_dims=128`` [every channel]: wide backbones' levels are modelled
  on a random subset of their channels, as PaDiM does;
- ``normalization="calibrated"`` [one maximum per level, and of the test
  set]: each level's probabilities are relative to its most likely training
  vector, in units of the training vectors' mean distance to it, so that
  every level has the same scale on normal images before the paper's sum of
  probabilities (see ``normalization``);
- ``image_score="coarsest"`` [the map's maximum]: an image's score is its
  least likely position of the coarsest modelled level, relative to the
  most likely training vector at that position (see ``image_score``);
- ``training_dtype="auto"`` [float32]: on CPUs with native bfloat16
  arithmetic the flows train with bfloat16 matrix products: the same
  accuracy, in about the same fit time with 2 coupling layers and 0.85
  (bottle) to 0.94 (magnetic tiles) of it with 4 (see ``training_dtype``).
"""

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
# Private, as in scikit-learn's own estimators: parameter constraints have no public API.
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from ._device import autocast, resolve_training_dtype
from ._fitted import TensorSpec, integer, none, one_of, optional, real, sequence
from ._graphs import MethodGraphs
from ._progress import progress
from .base import BaseDetector, _pieces, all_finite, joined, normal_rows, second_pass, upsampled_mean
from .features import Features
from .flows import ConditionalFlow, PositionWhitening, positional_encoding
from .gaussian import PositionMoments, leave_one_out_whitened
from .geometry import restore
from .metrics import pixel_auroc
from .sampling import MapSample, ReservoirSample
from .threads import parallel_map

# Fibers used to initialise ActNorm: plenty for a mean and a scale.
_INIT_FIBERS = 65536
# On a CPU, scoring a few thousand fibers at a time keeps each coupling's
# hidden activations in cache, several times faster than one large pass.
_CPU_CHUNK_FIBERS = 4096
# On a CPU, a worker scores this many images at once where sharing products
# changes no image's result (CFlowAD._cpu_piece_images): 8 at once, the
# decoders of bottle's default model on two workers score 580 images/s
# against 246 one image at a time.
_CPU_PIECE_IMAGES = 8
# ... which holds where every modelled level has at least this many rows and
# positions: products of a few rows round otherwise than the same rows among
# more (seen on this project's CPU at 1 to 8 positions in the flows, at
# maps of 2 and 3 rows in the upsampling, never from 9 rows on); the floors
# keep a margin.
_SHARED_MIN_ROWS, _SHARED_MIN_POSITIONS = 8, 64
# Floor of the mean probability: keeps -log of it finite (at most ~690).
_MIN_PROB = 1e-300
# Ridge of the whitening covariances, as PaDiM's default: it keeps them
# invertible when there are fewer training images than channels.
_WHITEN_REG = 0.01
# Whitening larger than this (float32 bytes) gets a warning: wide backbones
# make it the bulk of the model and of fit's memory.
_WHITEN_WARN_BYTES = 2**30
# Training steps per round of the early-stopping check: single steps' losses
# are too noisy to compare.
_ROUND = 10
# n_levels="auto": the levels modelled when there are no synthetic defects
# to choose on, and the most training images that get one for the choice
# (with 32, magnetic tiles' choice flipped on one draw in five).
_AUTO_FALLBACK_LEVELS = 2
_SYNTHETIC_IMAGES = 64


class CFlowAD(BaseDetector):
    """CFLOW-AD anomaly detector on :class:`~skcflow.Features`.

    One conditional normalizing flow per modelled pyramid level (by default
    the two coarsest, each vector averaged over its 3 x 3 neighbourhood)
    models the density of feature vectors given a positional encoding of
    their location. With ``whiten=True`` (the default) each position's
    vectors are first whitened with their training mean and covariance, so
    the flow starts from a Gaussian per position and learns what it misses.
    A position's anomaly probability per level is its likelihood relative to
    the level's most likely training vector, in units of the training
    vectors' mean distance to it,
    ``P_k = exp((log p - max_train log p) / (max_train log p - mean_train log p))``
    (clipped at 1); maps are upsampled to the input size and aggregated as
    in the paper, ``S = K - sum_k P_k``, returned as ``-log(1 - S / K)``:
    the same ranking of pixels, without the float32 rounding that makes
    ``S`` saturate at ``K`` on strongly anomalous regions. An image's score
    is the highest ``-log P`` of the coarsest level, ``P`` relative to the
    most likely training vector at each position. The normalising constants
    come from the training data, so scores never depend on the test set or
    the batch.

    Parameters
    ----------
    n_levels : "auto", int or None, default="auto"
        Model the ``n_levels`` coarsest levels of the feature pyramid (the
        paper's number of pooling layers, counted from the last); ``None``,
        or more levels than the features have, models them all. The best
        value depends on the product: with the default ``efficientnet_lite0``
        pyramid at 256 px, leaving out its finest level (stride 4) raises
        MTD magnetic-tile pixel AUROC / AUPRO from 0.785 / 0.754 to 0.809 /
        0.763 and lowers MVTec bottle's from 0.992 / 0.969 to 0.990 / 0.953
        (``benchmarks/results/levels.md``). No aggregation measured there
        keeps both: fine levels sharpen an object's maps and blur a
        texture's. ``"auto"`` chooses from the good images alone. Fitted in
        a pipeline on images in memory (:class:`~skcflow.pipeline.AnomalyPipeline`,
        which passes ``synthetic_defects`` to :meth:`fit`), every level is
        modelled, up to 64 training images get a synthetic defect each
        (:func:`~skcflow.datasets.paste_defects`), and the model keeps the
        coarsest ``k >= 2`` levels whose maps give the highest pixel AUROC
        (on every other pixel) on those copies beside the images themselves
        (scored left out of the whitening, as for the thresholds, and each
        level normalised by those images' statistics alone); the finer
        levels' decoders are dropped before the other training images are
        scored. This keeps every level on bottle and two on magnetic tiles,
        the better value on both (``levels.md``); its cost is the finest
        level's decoder, trained beside the others, the copies' encoding
        and the choice itself. ``level_selection_`` holds the scores. Fitted on features
        alone (with no images to paste defects on), on a stream of batches
        or by :meth:`partial_fit`, ``"auto"`` models the two coarsest
        levels. A choice on held-out images instead::

            X, y, cv = synthetic_split(good_images, random_state=0)
            search = GridSearchCV(make_pipeline(FeatureExtractor(), CFlowAD()),
                                  {"cflowad__n_levels": [2, None]},
                                  scoring=get_scorer("pixel_auroc"), cv=cv).fit(X, y)

        (``skcflow.model_selection.synthetic_split``,
        ``skcflow.metrics.get_scorer``; ``search.best_estimator_`` is then
        refitted on all the good images).
    neighborhood : int, default=3
        Replace each feature vector by the mean of the vectors in the
        ``neighborhood x neighborhood`` window around it (odd; 1 keeps the
        features as they are, as the paper does). The averaged vectors
        describe a patch rather than a point: on magnetic tiles pixel AUROC
        goes from 0.757 to 0.809, and AUPRO from 0.771 to 0.763 (bottle:
        0.990 / 0.966 to 0.990 / 0.953; ``benchmarks/results/levels.md``).
    max_dims : int or None, default=128
        Model at most this many channels of each level: a random subset of
        a wider level's channels, drawn at fit (``random_state``), as PaDiM
        keeps a random subset; ``None`` keeps all. Wide backbones need it:
        the whitening grows with the square of the channels (below), and the
        flows' cost with them. The default keeps every channel of
        ``efficientnet_lite0``'s pyramid (at most 112) and shrinks
        wide_resnet50_2's model at 256 px from 2.1 GB to
        85 MB (``benchmarks/results/speed.md``).
    whiten : bool, default=True
        Whiten each position's feature vectors with the mean and covariance
        of the training vectors there before the flow (an exact, fixed
        affine layer of the flow). A positional encoding alone lets a flow
        learn such position-specific statistics only slowly: on MTD magnetic
        tiles at 256 px, image / pixel AUROC go from 0.777 / 0.746 to
        0.968 / 0.809 (bottle: 0.996 / 0.983 to 1.000 / 0.990). ``False`` is the
        paper's decoder, whose only normalisation is a learned global one.
        The whitening holds ``H_k * W_k * D_k**2`` floats per level (``D_k``
        at most ``max_dims``): 19 MB for the default two levels of
        ``efficientnet_lite0`` at 256 px, 84 MB for resnet18's and
        wide_resnet50_2's (134 MB and 2.1 GB with all their channels; a
        warning says so above 1 GB).
    n_coupling_layers : int, default=2
        Affine coupling layers per decoder (the paper: 8). Behind the
        whitening, 4 layers, narrower subnets (``hidden_dim``) and a shorter
        schedule (``max_iter``, ``learning_rate``) kept the accuracy of 8 and
        trained 4.4 times faster: bottle image / pixel AUROC / AUPRO 1.000 /
        0.986 / 0.935 against 1.000 / 0.986 / 0.933, magnetic tiles 0.957 /
        0.803 / 0.751 against 0.958 / 0.798 / 0.749, fit on bottle's features
        15 s against 68 s (measured with ``normalization="position"`` and
        ``image_score="map"``, the defaults then). 2 layers keep the accuracy
        of 4 at five seeds, fitted as a pipeline does (both with ``D_k + 64``
        wide subnets, the default then): bottle pixel AUROC
        0.9922-0.9926 against 0.9918-0.9922 and AUPRO 0.9685-0.9703 against
        0.9660-0.9689 (image AUROC 1.0 with both), magnetic tiles image
        AUROC 0.9659-0.9684 against 0.9664-0.9693, pixel AUROC 0.8078-0.8104
        against 0.8078-0.8092 and AUPRO 0.7634-0.7649 against 0.7617-0.7644;
        the fit takes 6.9-7.3 s against 9.6-10.4 s on bottle and 11.1-11.6 s
        against 14.1-16.5 s on the magnetic tiles
        (``benchmarks/results/levels.md``), and a worker's decoders score an
        image in 0.63 of the time. Without the whitening, fewer layers cost
        accuracy (``whiten=False`` in ``levels.md``).
    condition_dim : int, default=128
        Size of the positional encoding (a multiple of 4).
    hidden_dim : int, "reference" or None, default=32
        Width of the coupling subnets' hidden layer; ``None`` uses
        ``D_k + 64`` (the earlier default), ``"reference"`` the reference
        code's ``2 * (D_k // 2 + condition_dim)`` (2.8 times the work of
        ``D_k + 64`` for a 40-channel level, for no accuracy). Behind the
        whitening, 32 keeps the accuracy of ``D_k + 64`` (104 and 176 at
        efficientnet_lite0's levels) at five seeds:
        bottle image / pixel AUROC / AUPRO 1.0 / 0.9926 / 0.9692 against
        1.0 / 0.9924 / 0.9694, magnetic tiles 0.9678 / 0.8106 / 0.7635
        against 0.9675 / 0.8091 / 0.7642 (means of seeds 0-4, no seed more
        than 0.0015 below), while the decoders score 32 maps in 0.79 of
        the time (22.2 against 27.9 ms on two workers) and bottle's fit
        takes 6.4 s against 7.4 s.
    clamp : float, default=1.9
        Soft bound of each coupling's log scale.
    activation : {"relu", "softplus"}, default="relu"
        Nonlinearity of the coupling subnets.
    fiber_batch_size : int, default=2048
        Feature vectors per training step.
    learning_rate : float, default=5e-4
        Adam's learning rate, after a linear warm-up over the first 5% of
        steps and under cosine annealing.
    max_iter : int, default=250
        Training steps per decoder.
    n_epochs : int, default=None
        If set, train for this many passes over all training feature vectors
        of each level instead (still capped by ``max_iter``).
    tol : float, default=None
        Early stopping: when set, a level stops training once the mean loss
        of a round of 10 steps has not improved on the best round by more
        than ``tol`` for ``n_iter_no_change`` rounds in a row. ``None``
        always runs the whole budget.
    n_iter_no_change : int, default=5
        Rounds without improvement tolerated when ``tol`` is set.
    rotation : float, default=0.0
        Random rotations of the training feature maps by up to this many
        degrees (the paper uses 5), each step drawing 32 maps; only for fits
        on features held in memory.
    reservoir_size : int or None, default=131072
        Training vectors per level kept by a streaming fit (batches of
        features, see :meth:`fit`) or by :meth:`partial_fit`: a uniform
        sample, without replacement, of all the training images' vectors
        (a reservoir), which the flows train on; ``None`` keeps them all. A
        fit on ``Features`` in memory trains on all of them. The default
        holds 131,072 vectors: 21 MB for efficientnet_lite0's 40-channel
        level, 59 MB for its 112-channel one (vectors are whitened as they
        are drawn, so there is no second copy). A streamed fit on 3,000
        images peaks at 1.10 x the memory of one on 100, against 1.19 x
        with twice the reservoir (``benchmarks/results/scale.md``, which
        measures the accuracy too).
    inference_dtype : {"float32", "bfloat16", "float16"}, default="float32"
        Precision of the decoders' matrix products when scoring (under
        :func:`torch.autocast`; training's is ``training_dtype``). Half
        precision is faster on GPUs with tensor cores; maps then differ from
        float32 ones by well under 1% of their range. On a CPU it is not
        faster (the decoders' time goes to elementwise work: end to end at
        batch 32, 121.1 images/s with bfloat16 decoders against 129.3 with
        float32 ones, both with a bfloat16 encoder; ``speed.md``), so the
        default stays float32; the encoder's precision is the
        ``FeatureExtractor``'s ``inference_dtype``.
    graph : bool, default=True
        On a CPU with float32 ``inference_dtype``, score through frozen
        TorchScript graphs of the decoders (:func:`torch.jit.freeze` of
        their traces: one per level, one of the levels' aggregation and one
        of the image scores, each for the images a worker scores at once
        and for single images, built the first time it is needed and never
        saved; a batch's shorter last piece runs without. The first maps
        and scores of batches of 32 and of 1 took 0.67 s, against 0.10 s
        operator by operator). A graph computes exactly what the decoders
        do, maps and scores bit for bit, but without Python, or its lock,
        between its many small operators, so that two workers no longer
        wait on each other: bottle's default model, 256 px, two workers,
        batch 32, maps 1064 images/s against 883 operator by operator (1.88
        and 1.63 times one worker's; ``benchmarks/results/speed.md``), for
        about 100 MB more resident memory while it scores, of which about
        35 MB stays in use (the rest is freed memory that C's allocator
        keeps for reuse).
        Graphs are kept while the parameters they depend on hold (a change
        of ``batch_size`` keeps them) and dropped by a refit. ``False`` runs
        the decoders operator by operator; on CUDA, and with half-precision
        decoders, they run so either way.
    training_dtype : {"auto", "float32", "bfloat16"}, default="auto"
        Precision of the flows' matrix products in training (under
        :func:`torch.autocast`; the loss, the gradients and the weights stay
        float32). ``"auto"`` is bfloat16 on CPUs that compute it natively
        (AVX512-BF16 or AMX) and float32 elsewhere (on CUDA too, where
        training is fast in float32). On an Intel Xeon with AMX, the
        default pipeline's fit (synthetic defects included) takes 6.9-7.3 s
        against 6.8-7.7 s in float32 on bottle and 11.1-11.6 s against
        10.7-11.8 s on magnetic tiles: the 2 coupling layers' products are
        too small to gain (with 4 layers: 10.4-11.0 s against 12.5-12.8 s
        and 15.4-16.0 s against 16.2-17.4 s). At five seeds on both, the
        fitted models' image AUROC, pixel AUROC and AUPRO stay within 0.0001
        of float32 training's and ``n_levels="auto"`` makes the same choices
        (``benchmarks/results/levels.md``).
    normalization : {"calibrated", "position", "level"}, default="calibrated"
        How each level's log-likelihoods become the probabilities that the
        paper's aggregation sums. ``"level"`` (the paper's code): relative to
        the level's most likely training vector. ``"calibrated"``: the same,
        divided by the level's mean training distance to it
        (``max(log_prob_max_[k]) - log_prob_mean_[k]``), so that a level
        whose likelihoods spread more on normal images does not dominate the
        sum; the sum keeps its effect of a soft minimum over the levels,
        which measured better than summing log-likelihoods or taking the
        largest level (``benchmarks/results/levels.md``). ``"position"``:
        relative to the most likely training vector at the same position
        (the default before ``"calibrated"``). On bottle / magnetic tiles,
        pixel AUROC and AUPRO go from 0.989 / 0.949 and 0.802 / 0.750 with
        ``"position"`` to 0.990 / 0.953 and 0.809 / 0.763 (with
        ``n_levels=None`` on bottle: 0.991 / 0.964 to 0.992 / 0.969).
    image_score : {"coarsest", "map"}, default="coarsest"
        ``"map"``: an image's score is its map's maximum, as in the paper.
        ``"coarsest"``: the highest ``-log P`` over the positions of the
        coarsest modelled level, ``P`` relative to the most likely training
        vector at each position: that level describes the largest patches,
        and the finer levels that sharpen the maps add noise to an image's
        maximum. MTD magnetic-tile image AUROC goes from 0.951 to 0.968
        (0.956 with the map's maximum and ``normalization="position"``;
        bottle: 1.000 in every case), and :meth:`score_samples` and
        :meth:`predict` need only the coarsest level's flow. The default
        pixel threshold is then the one that gives as many training images a
        non-empty mask as are flagged.
    contamination : float, default=0.01
        Expected share of anomalies among the training images; sets
        ``offset_`` and the default pixel threshold.
    pixel_threshold : float, default=None
        Threshold on the map for :meth:`predict_mask`; ``None`` uses the
        image threshold ``-offset_`` with ``image_score="map"``, and
        otherwise the map value exceeded by the same share of training maps.
    batch_size : int, default=32
        Images scored at once.
    n_jobs : int or None, default=None
        Workers, the calling thread among them, each computing whole images
        (and, in fit, whole levels) on one thread of torch's (see
        :mod:`skcflow.threads`):
        ``None`` or ``-1`` every core, a positive int that many. Results do
        not depend on it, nor on what else runs on the machine.
    device : str, default="auto"
        ``"auto"`` uses CUDA where available.
    random_state : int, RandomState instance or None, default=None
        Seeds the flows' initialisation and the sampling of training fibers.
    verbose : int, default=0
        Show progress bars when positive.

    Attributes
    ----------
    levels_ : list of int
        Indices, into the features' levels, of the modelled levels.
    channels_ : list of torch.Tensor of shape (D_k,)
        Per modelled level, the modelled channels (increasing indices).
    flows_ : torch.nn.ModuleList
        One :class:`~skcflow.flows.ConditionalFlow` per modelled level.
    whitening_ : torch.nn.ModuleList or None
        One :class:`~skcflow.flows.PositionWhitening` per modelled level, or None
        when ``whiten=False``.
    log_prob_max_ : list of torch.Tensor of shape (H_k, W_k)
        Per level and position, the highest training log-likelihood per
        dimension (of each training image left out of the whitening it
        helped fit).
    log_prob_mean_ : list of float
        Per level, the mean of those training log-likelihoods over the
        images and positions.
    level_selection_ : list of [int, float] or None
        With ``n_levels="auto"`` and synthetic defects: each candidate number
        of levels and its pixel AUROC on the synthetic defects; None when no
        choice was made.
    shrinkage_ : list of float
        Per level, the share of the level's average covariance in each
        position's whitening covariance (Ledoit-Wolf, estimated from the
        training vectors; empty when ``whiten=False``).
    training_dtype_ : {"float32", "bfloat16"}
        Precision the flows were trained in (``training_dtype`` resolved
        for the device and CPU).
    n_iter_ : list of int
        Training steps run per level.
    loss_curve_ : list of list of float
        Training loss per step, per level.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    pixel_threshold_ : float
        Threshold used by :meth:`predict_mask`.
    model_size_bytes_ : int
        Size of the decoders' parameters and whitening.
    feature_shapes_ : list of tuple
        ``(D_k, H_k, W_k)`` per level seen in fit.
    device_ : torch.device
        Device the decoders live on.

    Examples
    --------
    >>> from skcflow import CFlowAD, FeatureExtractor, make_defects
    >>> data = make_defects(n_train=8, n_test=4, image_size=64, random_state=0)
    >>> extractor = FeatureExtractor(image_size=64, device="cpu").fit()
    >>> model = CFlowAD(max_iter=20, device="cpu", random_state=0)
    >>> model = model.fit(extractor.transform(data.train.images))
    >>> model.anomaly_map(extractor.transform(data.test.images)).shape
    (4, 64, 64)
    """

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        "n_levels": [None, StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "neighborhood": [Interval(Integral, 1, None, closed="left")],
        "max_dims": [None, Interval(Integral, 2, None, closed="left")],
        "whiten": ["boolean"],
        "n_coupling_layers": [Interval(Integral, 1, None, closed="left")],
        "condition_dim": [Interval(Integral, 4, None, closed="left")],
        "hidden_dim": [None, StrOptions({"reference"}), Interval(Integral, 1, None, closed="left")],
        "clamp": [Interval(Real, 0, None, closed="neither")],
        "activation": [StrOptions({"relu", "softplus"})],
        "fiber_batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "n_epochs": [None, Interval(Real, 0, None, closed="neither")],
        "tol": [None, Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "reservoir_size": [None, Interval(Integral, 1, None, closed="left")],
        "inference_dtype": [StrOptions({"float32", "bfloat16", "float16"})],
        "graph": ["boolean"],
        "training_dtype": [StrOptions({"auto", "float32", "bfloat16"})],
        "normalization": [StrOptions({"calibrated", "position", "level"})],
        "image_score": [StrOptions({"coarsest", "map"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_levels="auto",
        neighborhood=3,
        max_dims=128,
        whiten=True,
        n_coupling_layers=2,
        condition_dim=128,
        hidden_dim=32,
        clamp=1.9,
        activation="relu",
        fiber_batch_size=2048,
        learning_rate=5e-4,
        max_iter=250,
        n_epochs=None,
        tol=None,
        n_iter_no_change=5,
        rotation=0.0,
        reservoir_size=2**17,
        inference_dtype="float32",
        graph=True,
        training_dtype="auto",
        normalization="calibrated",
        image_score="coarsest",
        contamination=0.01,
        pixel_threshold=None,
        batch_size=32,
        n_jobs=None,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.n_levels = n_levels
        self.neighborhood = neighborhood
        self.max_dims = max_dims
        self.whiten = whiten
        self.n_coupling_layers = n_coupling_layers
        self.condition_dim = condition_dim
        self.hidden_dim = hidden_dim
        self.clamp = clamp
        self.activation = activation
        self.fiber_batch_size = fiber_batch_size
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.n_epochs = n_epochs
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.rotation = rotation
        self.reservoir_size = reservoir_size
        self.inference_dtype = inference_dtype
        self.graph = graph
        self.training_dtype = training_dtype
        self.normalization = normalization
        self.image_score = image_score
        self.contamination = contamination
        self.pixel_threshold = pixel_threshold
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y=None, synthetic_defects=None):
        """Learn the normal appearance from features of defect-free images.

        Parameters
        ----------
        X, y
            As for :meth:`BaseDetector.fit <skcflow.base.BaseDetector.fit>`.
        synthetic_defects : tuple, default=None
            ``(rows, features, masks)`` for ``n_levels="auto"``: indices
            into ``X`` of normal training images, the ``Features`` of their
            copies with a synthetic defect each, and those defects' masks
            ``(n, H, W)`` at the images' size. :class:`~skcflow.pipeline.AnomalyPipeline`
            makes them (see ``n_levels``), as does
            :func:`skcflow.pipeline.synthetic_defects`.

        Returns
        -------
        self
        """
        source = getattr(self, "_synthetic_source", None)
        if synthetic_defects is None and source is not None and isinstance(X, Features):
            synthetic_defects = source(X).get("synthetic_defects")
        if synthetic_defects is not None:
            synthetic_defects = self._check_synthetic_defects(X, y, synthetic_defects)
        self._cache_synthetic = synthetic_defects
        try:
            return super().fit(X, y)
        finally:
            del self._cache_synthetic

    def _check_synthetic_defects(self, X, y, synthetic_defects):
        """The synthetic defects with their rows among the normal samples fit keeps."""
        if self.n_levels != "auto":
            raise ValueError(f'synthetic_defects choose n_levels="auto"; n_levels is {self.n_levels!r}.')
        if not isinstance(X, Features):
            raise ValueError("synthetic_defects need the training Features in memory, not a stream.")
        rows, features, masks = synthetic_defects
        rows, masks = np.asarray(rows), np.asarray(masks)
        if not isinstance(features, Features) or not len(rows) == len(features) == len(masks):
            raise ValueError(f"synthetic_defects must be (rows, Features, masks) of one length; got "
                             f"{len(rows)} rows, {len(features)} images and {len(masks)} masks.")
        if masks.shape[1:] != features.input_size:
            raise ValueError(f"synthetic_defects' masks are {masks.shape[1:]} but their images are "
                             f"{features.input_size}.")
        normal = normal_rows(len(X), y)
        where = np.searchsorted(normal, rows)
        if not np.array_equal(normal[np.minimum(where, len(normal) - 1)], rows):
            raise ValueError("synthetic_defects' rows must be normal training images of X.")
        return where, features, masks

    def _synthetic_defect_rows(self, features, y=None):
        """For :class:`~skcflow.pipeline.AnomalyPipeline`: ``(rows, random_state)``
        of the training images to paste synthetic defects on, or None when
        ``n_levels`` leaves nothing to choose."""
        if self.n_levels != "auto" or len(features.shapes) <= _AUTO_FALLBACK_LEVELS:
            return None
        normal = normal_rows(len(features), y)
        rng = np.random.RandomState(self._seed())
        rows = np.sort(rng.permutation(normal)[:_SYNTHETIC_IMAGES])
        return rows, rng

    def _begin(self, features, in_memory):
        if self.condition_dim % 4:
            raise ValueError(f"condition_dim must be a multiple of 4; got {self.condition_dim}.")
        if self.neighborhood % 2 == 0:
            raise ValueError(f"neighborhood must be odd; got {self.neighborhood}.")
        self.levels_ = self._modelled_levels()
        self.training_dtype_ = resolve_training_dtype(self.training_dtype, self.device_)
        seed = self._seed()
        generator = self._cache_generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.flows_ = self._make_flows(generator).to(self.device_)
        self.channels_ = [
            torch.arange(full) if dim == full else torch.randperm(full, generator=generator)[:dim].sort().values
            for (full, _, _), (dim, _, _) in zip(self._full_shapes(), self._level_shapes())
        ]
        if self.whiten:
            _warn_if_whitening_is_large(self._level_shapes())
        self.whitening_ = self._make_whitening()
        self._cache_maps = None
        self.n_iter_, self.loss_curve_, self.shrinkage_ = [], [], []
        self.level_selection_ = None
        self._cache_moments = None
        if self.whiten:
            self._cache_moments = [PositionMoments(h * w, d, self.device_) for d, h, w in self._level_shapes()]
        self._cache_samples = [MapSample() if in_memory else ReservoirSample(self.reservoir_size, generator)
                               for _ in self.levels_]
        self._cache_added = 0

    def _accumulate(self, features):
        for level, fmap in enumerate(self._levels(features)):
            # Channels-last once, so that sampling fibers never copies the maps.
            fibers = fmap.to(self.device_).permute(0, 2, 3, 1).contiguous()
            if self._cache_moments is not None:
                for chunk in fibers.split(self.batch_size):
                    self._cache_moments[level].update(chunk.flatten(1, 2))
            self._cache_samples[level].update(fibers)
        self._cache_added += len(features)

    def _complete(self):
        first = not self.n_iter_
        budgets = []
        for level in range(len(self.flows_)):
            if self._cache_moments is not None:
                # Covariances of few images would whiten new images to
                # outliers: shrink them towards the level's average.
                moments = self._cache_moments[level]
                shrinkage = moments.shrinkage()
                self.shrinkage_[level:level + 1] = [shrinkage]
                self.whitening_[level].initialize(moments, _WHITEN_REG, shrinkage)
            if first:
                n_steps = self._n_steps(self._cache_samples[level].seen)
            else:
                # An update trains on for a share of the budget as large as
                # the new images' share of all the training images.
                share = self._cache_added / self.n_train_samples_
                n_steps = max(_ROUND, math.ceil(self.max_iter * share))
            budgets.append(n_steps)
        # The levels train at once, one worker each, each level from a
        # random stream of its own: the model does not depend on n_jobs.
        # The costliest start first (a step's cost grows with the flow's
        # parameters), so that cheap levels fill the other workers: on 2
        # cores, bottle's three levels then train alongside the widest, 10.3 s
        # rather than 14.3 s with the finest first (whitening included).
        seed = self._seed()
        order = sorted(range(len(budgets)), key=lambda level: -budgets[level] * sum(
            p.numel() for p in self.flows_[level].parameters()))

        def prepare_and_train(level):
            # Whitening a level's sample is the level's own work: in its
            # worker, beside the other levels' training (4 s of 15 on
            # magnetic tiles' 761 images, when it came first, on one core).
            sample = self._cache_samples[level]
            if isinstance(sample, MapSample):
                sample.prepare(lambda fibers: self._whiten_set(level, fibers), self.rotation)
            else:
                sample.prepare(self._whiten_at(level), self.rotation)
            return self._train(level, budgets[level], first, seed)

        trained = parallel_map(prepare_and_train, order, self.n_jobs)
        curves = [losses for _, losses in sorted(zip(order, trained))]
        for level, (flow, losses) in enumerate(zip(self.flows_, curves)):
            if first:
                self.n_iter_.append(len(losses))
                self.loss_curve_.append(losses)
            else:
                self.n_iter_[level] += len(losses)
                self.loss_curve_[level] += losses
            flow.eval()
        # Later updates draw from a bounded sample of the maps held in memory.
        self._cache_samples = [
            sample.to_reservoir(self.reservoir_size, self._cache_generator)
            if isinstance(sample, MapSample) else sample for sample in self._cache_samples
        ]
        self._cache_added = 0
        self._cache_maps = None

    def _resume(self):
        # A saved model keeps its whitening and flows but not the running
        # sums and the reservoir: an update then keeps the whitening as it
        # is and trains the flows on on the new images' vectors.
        if "_cache_samples" in vars(self):
            return
        generator = torch.Generator().manual_seed(self._seed() + self.n_train_samples_)
        self._cache_generator, self._cache_moments, self._cache_added = generator, None, 0
        self._cache_samples = [ReservoirSample(self.reservoir_size, generator) for _ in self.levels_]

    def _selecting_levels(self):
        return getattr(self, "_cache_synthetic", None) is not None

    def _modelled_levels(self):
        available = len(self.feature_shapes_)
        n_levels = self.n_levels
        if n_levels == "auto":
            n_levels = None if self._selecting_levels() else _AUTO_FALLBACK_LEVELS
        return list(range(max(0, available - (n_levels or available)), available))

    def _full_shapes(self):
        return [self.feature_shapes_[k] for k in self.levels_]

    def _level_shapes(self):
        """``(D_k, H_k, W_k)`` of the modelled levels, ``D_k`` the modelled channels."""
        return [(min(dim, self.max_dims or dim), height, width) for dim, height, width in self._full_shapes()]

    def _levels(self, features):
        """The modelled channels of the modelled levels' maps, each vector
        averaged over its neighbourhood."""
        for index, channels in zip(self.levels_, self.channels_):
            yield neighbourhood_mean(select_channels(features.maps[index], channels), self.neighborhood)

    def _make_flows(self, generator=None):
        return nn.ModuleList(
            ConditionalFlow(
                dim, self.condition_dim, self.n_coupling_layers,
                self._hidden_dim(dim),
                self.clamp, self.activation, generator,
            )
            for dim, _, _ in self._level_shapes()
        )

    def _hidden_dim(self, dim):
        if self.hidden_dim == "reference":
            return 2 * (dim // 2 + self.condition_dim)
        return self.hidden_dim or dim + 64

    def _make_whitening(self):
        if not self.whiten:
            return None
        return nn.ModuleList(
            PositionWhitening(height * width, dim) for dim, height, width in self._level_shapes()
        ).to(self.device_)

    def _empty_modules(self):
        modules = {"flows_": self._make_flows()}
        if self.whiten:
            modules["whitening_"] = self._make_whitening()
        return modules

    def _whiten_set(self, level, fibers):
        """Whitened ``N x H x W x D`` training fibers (unchanged without whitening)."""
        if self.whitening_ is None:
            return fibers
        return self.whitening_[level].whiten_set(fibers.flatten(1, 2)).view(fibers.shape)

    def _whiten_at(self, level):
        """Whitening of vectors ``(K, D)`` at given flat positions (identity without)."""
        if self.whitening_ is None:
            return lambda x, positions: x
        return self.whitening_[level].at

    def _n_steps(self, n_fibers):
        if self.n_epochs is None:
            return self.max_iter
        return min(self.max_iter, math.ceil(self.n_epochs * n_fibers / self.fiber_batch_size))

    def _train(self, level, n_steps, initialize, seed):
        """Train a level's flow on its sample's vectors for ``n_steps`` steps."""
        flow, sample = self.flows_[level], self._cache_samples[level]
        # Seeded by the level and the images seen: an update draws anew.
        generator = torch.Generator().manual_seed((seed * 1_000_003 + self.n_train_samples_ * 101 + level) % 2**63)
        if initialize:
            flow.norm.initialize(sample.init_vectors(_INIT_FIBERS, generator))
        _, height, width = self._level_shapes()[level]
        encoding = positional_encoding(self.condition_dim, height, width).to(self.device_)
        optimizer = torch.optim.Adam(flow.parameters(), lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(n_steps))
        flow.train()
        losses = []
        for _ in progress(range(n_steps), self.verbose, desc=f"level {level}", unit="step"):
            x, position = sample.sample(self.fiber_batch_size, generator)
            # Projecting the encodings of all positions once is cheaper than
            # projecting one per fiber when a batch outnumbers the positions;
            # index_select, unlike indexing, has a deterministic backward on CPU.
            # Backward runs outside autocast, as torch recommends.
            with autocast(self.training_dtype_, self.device_):
                if len(position) > len(encoding):
                    biases = [b.index_select(0, position) for b in flow.condition(encoding)]
                else:
                    biases = flow.condition(encoding[position])
                loss = -flow.log_prob(x, biases).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss of level {level} became {loss.item()} after "
                    f"{len(losses)} steps; lower learning_rate (now {self.learning_rate}) "
                    f"or clamp (now {self.clamp})."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if self.tol is not None and self._converged(losses):
                break
        return losses

    def _converged(self, losses):
        """Whether the last ``n_iter_no_change`` rounds of 10 steps brought
        no improvement larger than ``tol`` over the best earlier round."""
        if len(losses) % _ROUND or len(losses) < _ROUND * (self.n_iter_no_change + 1):
            return False
        rounds = [sum(losses[i : i + _ROUND]) / _ROUND for i in range(0, len(losses), _ROUND)]
        best_before = min(rounds[: -self.n_iter_no_change])
        return min(rounds[-self.n_iter_no_change :]) > best_before - self.tol

    def _maps(self, with_maxima=True):
        """The fitted state's scoring module (:class:`CFlowMaps`), built once
        per setting of the parameters it depends on."""
        def build():
            shapes = self._level_shapes()
            if self.device_.type == "cpu":
                chunks = [max(1, _CPU_CHUNK_FIBERS // (h * w)) for _, h, w in shapes]
            else:
                chunks = [self.batch_size] * len(self.levels_)
            return CFlowMaps(
                self.flows_, self.whitening_, self.levels_, self.channels_, shapes, self.neighborhood,
                self.condition_dim, self.frame_size_, self.log_prob_max_ if with_maxima else None,
                chunks, self.inference_dtype, self.log_prob_mean_ if with_maxima else None,
                self.normalization, self.image_score,
            ).to(self.device_)

        # Looked up for every image scored: only the key is computed here.
        # A CPU's chunks do not depend on the batch size, and a change of it
        # keeps the module and its graphs.
        batch_size = None if self.device_.type == "cpu" else self.batch_size
        return self._cached_maps((self.inference_dtype, batch_size, str(self.device_), with_maxima,
                                  self.normalization, self.image_score), build)

    def _on_device(self, features):
        """The pyramid with the modelled levels on the decoders' device."""
        return [m.to(self.device_) if k in self.levels_ else m for k, m in enumerate(features.maps)]

    def _batch_maps(self, features):
        maps = self._maps()
        return self._decode(maps, "aggregate", *self._level_log_probs(features, maps=maps))

    def _batch_scores(self, features):
        return self._decode(self._maps(), "scores", *self._on_device(features))

    def _decode(self, maps, method, *args):
        """``maps.method(*args)``, through its graph where ``graph`` says so."""
        # Only the scoring module, the one with the maxima: fit's passes
        # without them (n_levels="auto" on the synthetic defects) come once.
        # And only whole pieces and single images: a batch's shorter last
        # piece scores operator by operator (to the same values) rather
        # than pay a trace of its own.
        if not (self.graph and self.device_.type == "cpu" and self.inference_dtype == "float32"
                and maps.n_references and len(args[-1]) in (1, self._cpu_piece_images())):
            return getattr(maps, method)(*args)
        graphs = self.__dict__.get("_cache_graphs")
        if graphs is None or graphs.module is not maps:
            # Built with the scoring module they trace, and dropped with it.
            graphs = self._cache_graphs = MethodGraphs(maps)
        return graphs(method, *args)

    def _maps_score_images(self):
        return self.image_score == "map"

    def _cpu_piece_images(self):
        # The whitening multiplies groups of a fixed shape
        # (PositionWhitening.forward), the flows and the upsampling each
        # image's rows among the piece's; per-image operators otherwise
        # keep two workers waiting on each other for Python's lock between
        # them (bottle's default model: two workers scored 1.09 times as
        # many images as one, one image at a time, and 1.67 in pieces;
        # results/speed_workers.md at commit 7f1da82, and speed.md).
        shapes = self._level_shapes()
        if all(h >= _SHARED_MIN_ROWS and h * w >= _SHARED_MIN_POSITIONS for _, h, w in shapes):
            return _CPU_PIECE_IMAGES
        return 1

    def _level_log_probs(self, features, leave_one_out_of=None, maps=None):
        """Log-likelihood per dimension ``(N, H_k, W_k)`` of each modelled level.

        ``leave_one_out_of=n``: the features are the ``n`` training images',
        each whitened as if it had been left out of the whitening's fit.
        ``maps``: the scoring module to use (default: one without the
        maxima, which fit has yet to set when it calls this).
        """
        maps = self._maps(with_maxima=False) if maps is None else maps
        pyramid = self._on_device(features)
        shares = [1 - delta for delta in self.shrinkage_] or [None] * len(self.levels_)

        def level(i):
            fmap = pyramid[self.levels_[i]]
            with torch.inference_mode():
                if leave_one_out_of is None:
                    return self._decode(maps, "log_prob", i, fmap)
                return maps.log_prob(i, fmap, (leave_one_out_of, shares[i]))

        # A batch of one piece (one image) is computed in the calling thread,
        # and its levels go to the workers; in a worker, beside the other
        # pieces, they run there one after another. A GPU's levels queue on
        # one stream whichever thread sends them.
        n_jobs = self.n_jobs if self.device_.type == "cpu" else 1
        return parallel_map(level, range(len(self.levels_)), n_jobs)

    def _training_batch_maps(self, features, rows):
        return self._maps().aggregate(*self._level_log_probs(features, self.n_train_samples_))

    def _training_outputs(self, batches, start):
        # The training images' leave-one-out log-likelihoods are kept (a few
        # floats per position): the per-position maxima over all of them
        # normalise every map, the training maps included.
        n = self.n_train_samples_
        # n_levels="auto" chooses first, on the images with a synthetic
        # defect alone, so that the finer levels it drops cost no pass over
        # every training image (the finest level's pass over magnetic
        # tiles' 761 images took 5.5 s of a 27 s fit).
        known = self._select_levels(batches[0]) if self._selecting_levels() else {}
        # Written in place as each image is done rather than gathered and
        # concatenated: one copy, and no small results left in the workers'
        # memory pools (see skcflow.streaming._give_back_freed_memory).
        log_probs = [torch.empty(n - start, h, w, device=self.device_) for _, h, w in self._level_shapes()]
        offset = 0
        for batch in second_pass(batches, n - start):
            self._write_leave_one_out(batch, log_probs, offset, known)
            offset += len(batch)
        maxima = [log_prob.amax(0) for log_prob in log_probs]
        means = [log_prob.double().mean().item() for log_prob in log_probs]
        if start:
            maxima = [torch.maximum(old, new) for old, new in zip(self.log_prob_max_, maxima)]
            means = [(old * start + new * (n - start)) / n for old, new in zip(self.log_prob_mean_, means)]
        # Per position: the flow's density is conditional on the position,
        # and its scale varies from one position to another (a uniform
        # background concentrates far more than an edge), so one maximum
        # per level would let the most concentrated positions decide how
        # every other position's likelihoods turn into probabilities.
        self.log_prob_max_, self.log_prob_mean_ = maxima, means
        self._cache_maps = None
        maps_module = self._maps()
        outputs = np.empty((len(log_probs[0]), 2))
        for first in range(0, len(outputs), self.batch_size):
            with torch.inference_mode():
                batch = [lp[first : first + self.batch_size] for lp in log_probs]
                maps = maps_module.aggregate(*batch)
                scores = maps_module.image_scores(batch, maps)
            if not (all_finite(maps) and all_finite(scores)):
                raise FloatingPointError("CFlowAD produced non-finite anomaly maps of its training "
                                         "images; the model or its input is corrupt.")
            outputs[first : first + len(maps), 0] = scores.float().double().cpu().numpy()
            outputs[first : first + len(maps), 1] = maps.flatten(1).amax(1).float().double().cpu().numpy()
        return outputs[:, 0], outputs[:, 1]

    def _write_leave_one_out(self, batch, out, offset, known=None):
        """Write the leave-one-out log-likelihoods of the training images
        ``batch``, the ``offset``-th on, into ``out`` (per level ``(N, H_k,
        W_k)``); ``known`` holds those of some images already, by index."""
        known = known or {}

        def write(piece):
            first = offset + piece.start
            if len(piece) == 1 and first in known:
                values = known[first]
            else:
                with torch.inference_mode():
                    values = self._level_log_probs(batch[piece.start : piece.stop], self.n_train_samples_)
            for level_out, value in zip(out, values):
                level_out[first : first + len(piece)] = value

        # Images whose values are known come one at a time, as they were computed.
        pieces = _pieces(0, len(batch), self.device_, 1 if known else self._cpu_piece_images())
        parallel_map(write, pieces, self.n_jobs)

    def _select_levels(self, training):
        """Keep the coarsest levels whose maps find the synthetic defects best
        (``n_levels="auto"``), judged on the images of ``training`` (the
        training features) that got a defect, as they are and with it.
        Returns those images' leave-one-out log-likelihoods at the kept
        levels, by their index among the training images."""
        rows, features, masks = self._cache_synthetic
        if len(self.levels_) <= _AUTO_FALLBACK_LEVELS:
            return {}
        clean = [torch.empty(len(rows), h, w, device=self.device_) for _, h, w in self._level_shapes()]
        self._write_leave_one_out(training[rows], clean, 0)
        features = self._check_features(features)
        with torch.inference_mode():
            pasted = self._level_log_probs(features)
        # Every level normalised by these images' statistics alone, as the
        # model normalises it by all training images': like for like, and
        # no level needs every image scored to be judged.
        normalizers = [normalizer(lp.amax(0), lp.double().mean().item(), self.normalization) for lp in clean]
        # Every other pixel of each row and column: the maps are bilinear
        # from levels of at most a quarter of the input's size, and the AUROC
        # of a quarter of the pixels costs a quarter as much.
        truth = np.concatenate([np.zeros_like(masks), masks])[:, ::2, ::2]
        scores = []
        for k in range(_AUTO_FALLBACK_LEVELS, len(self.levels_) + 1):
            kept = range(len(self.levels_) - k, len(self.levels_))

            def maps(level_log_probs):
                return aggregate_likelihoods([level_log_probs[i] for i in kept], [normalizers[i][0] for i in kept],
                                             self.frame_size_, [normalizers[i][1] for i in kept])

            with torch.inference_mode():
                frames = torch.cat([maps(clean), maps(pasted)]).float().numpy()
            restored = restore(frames, features.input_size, features.frame_size, features.keep_aspect)
            scores.append([k, pixel_auroc(truth, restored[:, ::2, ::2])])
        self.level_selection_ = scores
        dropped = len(self.levels_) - chosen_levels(scores)
        self.levels_, self.channels_ = self.levels_[dropped:], self.channels_[dropped:]
        self.flows_ = nn.ModuleList(list(self.flows_)[dropped:])
        if self.whitening_ is not None:
            self.whitening_ = nn.ModuleList(list(self.whitening_)[dropped:])
        self.shrinkage_, self.n_iter_ = self.shrinkage_[dropped:], self.n_iter_[dropped:]
        self.loss_curve_, self._cache_samples = self.loss_curve_[dropped:], self._cache_samples[dropped:]
        if self._cache_moments is not None:
            self._cache_moments = self._cache_moments[dropped:]
        self._cache_maps = None
        return {row: [lp[j] for lp in clean[dropped:]] for j, row in enumerate(rows.tolist())}

    def _fitted_tensors(self):
        modules = [self.flows_] if self.whitening_ is None else [self.flows_, self.whitening_]
        return [t for module in modules for t in module.state_dict().values()]

    def _fitted_schema(self):
        schema = {
            **super()._fitted_schema(),
            "levels_": sequence(integer()),
            "training_dtype_": one_of("float32", "bfloat16"),
            "shrinkage_": sequence(real(0, 1)),
            "log_prob_mean_": sequence(real()),
            "level_selection_": optional(sequence(sequence(real(), length=2))),
            "n_iter_": sequence(integer()),
            "loss_curve_": sequence(sequence(real())),
        }
        if not self.whiten:
            schema["whitening_"] = none()
        return schema

    def _fitted_tensor_specs(self):
        return {**super()._fitted_tensor_specs(),
                "log_prob_max_": [TensorSpec(self.feature_shapes_[k][1:], torch.float32)
                                  for k in self.levels_],
                "channels_": [TensorSpec((dim,), torch.int64, text=f"increasing channel indices below {full}",
                                         values=lambda t, full=full: bool((t >= 0).all() and (t < full).all()
                                                                          and (t.diff() > 0).all()))
                              for (full, _, _), (dim, _, _) in zip(self._full_shapes(), self._level_shapes())]}

    def _check_fitted(self):
        n_levels, expected = len(self.levels_), self._modelled_levels()
        if self.level_selection_ is not None:
            if self.n_levels != "auto":
                return f"level_selection_ is set but n_levels is {self.n_levels!r}, not 'auto'."
            available = len(self.feature_shapes_)
            expected = list(range(max(0, available - chosen_levels(self.level_selection_)), available))
        if self.levels_ != expected:
            return f"levels_ {self.levels_} are not the levels n_levels={self.n_levels} models."
        if self.training_dtype not in ("auto", self.training_dtype_):
            return f"training_dtype_ {self.training_dtype_!r} is not training_dtype={self.training_dtype!r}."
        if (len(self.shrinkage_) != (n_levels if self.whiten else 0) or len(self.n_iter_) != n_levels
                or [len(c) for c in self.loss_curve_] != self.n_iter_ or len(self.log_prob_mean_) != n_levels):
            return "shrinkage_, n_iter_, loss_curve_ and log_prob_mean_ do not match the modelled levels."
        for flow in self.flows_:
            order = torch.arange(flow.dim).expand_as(flow.perms)
            if not (torch.equal(flow.perms.sort(1).values, order)
                    and torch.equal(flow.perms.gather(1, flow.inverse_perms), order)):
                return "a flow's permutations are not permutations and their inverses."
        return super()._check_fitted()


def chosen_levels(scores):
    """The number of levels ``n_levels="auto"`` keeps, of its ``[k, score]``
    pairs: the best score; ties go to fewer levels, the cheaper model."""
    return max(scores, key=lambda pair: (pair[1], -pair[0]))[0]


def select_channels(fmap, channels):
    """The ``channels`` of ``(N, D, H, W)`` maps (all of them: the maps as they are)."""
    if len(channels) == fmap.shape[1]:
        return fmap
    # Selected along the last axis in memory, so that the extractor's
    # channels-last layout, which the neighbourhood mean and the whitening
    # are fastest on, is kept.
    return fmap.permute(0, 2, 3, 1).index_select(3, channels).permute(0, 3, 1, 2)


def neighbourhood_mean(fmap, size):
    """Each vector of ``(N, D, H, W)`` maps averaged over its ``size x size``
    window (borders: over the part inside the map)."""
    if size == 1:
        return fmap
    return F.avg_pool2d(fmap, size, 1, size // 2, count_include_pad=False)


class CFlowMaps(nn.Module):
    """A fitted CFlowAD's anomaly maps of a feature pyramid, as one module.

    What :class:`CFlowAD` scores with and what :func:`skcflow.export_onnx`
    exports: each modelled level's modelled channels, its vectors averaged over their neighbourhood,
    whitened per position, scored by the level's conditional flow, then the
    levels aggregated (:func:`aggregate_likelihoods`).

    Parameters
    ----------
    flows, whitening : torch.nn.ModuleList
        The fitted decoders and whitening (``whitening=None`` without).
    levels : list of int
        Indices, in the pyramid, of the modelled levels.
    channels : list of torch.Tensor
        Per modelled level, the modelled channels (``channels_``).
    shapes : list of tuple
        ``(D_k, H_k, W_k)`` of the modelled levels.
    neighborhood, condition_dim : int
        As :class:`CFlowAD`'s parameters.
    frame_size : tuple of int
        Where the maps are computed.
    maxima : list of torch.Tensor of shape (H_k, W_k), or None
        Per level and position, the highest training log-likelihood
        (``log_prob_max_``); None before fit has them, when only
        :meth:`log_prob` can be used.
    chunk_images : list of int
        Images whose vectors go through a flow at once (a CPU's cache
        holds a few thousand vectors' activations); an export takes them
        all at once.
    inference_dtype : str
        Precision of the flows' matrix products (under autocast).
    means : list of float, or None
        Per level, the mean training log-likelihood (``log_prob_mean_``).
    normalization, image_score : str
        As :class:`CFlowAD`'s parameters.
    """

    def __init__(self, flows, whitening, levels, channels, shapes, neighborhood, condition_dim, frame_size,
                 maxima, chunk_images, inference_dtype="float32", means=None, normalization="calibrated",
                 image_score="coarsest"):
        super().__init__()
        for i, kept in enumerate(channels):
            self.register_buffer(f"channels_{i}", kept.clone())
        self.flows, self.whitening = flows, whitening
        self.levels, self.neighborhood = list(levels), neighborhood
        self.frame_size, self.chunk_images = tuple(frame_size), list(chunk_images)
        self.inference_dtype = inference_dtype
        # The condition depends only on the position: projected once per
        # level, for any number of images.
        with torch.no_grad():
            for i, (flow, (_, height, width)) in enumerate(zip(flows, shapes)):
                encoding = positional_encoding(condition_dim, height, width).to(flow.perms.device)
                for j, bias in enumerate(flow.condition(encoding)):
                    self.register_buffer(f"bias_{i}_{j}", bias.detach().clone())
        # Constants of the fitted whitening, computed once rather than per
        # image (the log of a strided diagonal: a tenth of the decoder).
        for i, layer in enumerate(whitening or []):
            self.register_buffer(f"log_det_{i}", layer.log_det().detach().clone())
        self.image_score, self.n_references = image_score, 0
        if maxima is not None:
            for i, (maximum, mean) in enumerate(zip(maxima, means)):
                reference, scale = normalizer(maximum, mean, normalization)
                self.register_buffer(f"reference_{i}", reference)
                self.register_buffer(f"scale_{i}", scale)
            # The image score's constants: the coarsest level's maxima per position.
            self.register_buffer("score_maximum", maxima[-1].detach().clone())
            self.n_references = len(maxima)

    def _biases(self, i):
        """The ``i``-th modelled level's condition biases, one per coupling."""
        return [getattr(self, f"bias_{i}_{j}") for j in range(len(self.flows[i].couplings))]

    def log_prob(self, i, fmap, leave_one_out=None):
        """Log-likelihood per dimension ``(N, H, W)`` of the ``i``-th modelled level.

        ``fmap`` is the level's ``(N, D, H, W)`` map. ``leave_one_out=(n,
        sample_share)``: the maps are the ``n`` training images', each
        whitened as if it had been left out of the whitening's fit.
        """
        fmap = neighbourhood_mean(select_channels(fmap, getattr(self, f"channels_{i}")), self.neighborhood)
        n_images, dim, height, width = fmap.shape
        # Unit-stride vectors whatever the maps' memory layout (a copy only
        # for maps that are not channels-last): on transposed vectors the
        # whitening's products take a slow path, 5 times slower at 128 dims.
        x, log_det = fmap.permute(0, 2, 3, 1).reshape(n_images, height * width, dim).contiguous(), 0
        if self.whitening is not None:
            x, log_det = self.whitening[i](x), getattr(self, f"log_det_{i}")
            if leave_one_out is not None and leave_one_out[0] >= 3:
                x, shift = leave_one_out_whitened(x, leave_one_out[0], sample_share=leave_one_out[1])
                x, log_det = x.float(), log_det + shift.float()
        flow = self.flows[i]
        chunks = [x] if torch.compiler.is_exporting() else x.split(self.chunk_images[i])
        with autocast(self.inference_dtype, x.device):
            # Each position's condition biases broadcast over the chunk's images.
            log_prob = joined([flow.log_prob(chunk, self._biases(i)) for chunk in chunks])
        return (log_prob.float() + log_det / dim).view(n_images, height, width)

    def _log_probs(self, pyramid):
        return [self.log_prob(i, pyramid[k]) for i, k in enumerate(self.levels)]

    def aggregate(self, *log_probs):
        """Anomaly maps ``(N, H_frame, W_frame)``, float64, of the levels' log-likelihoods
        (one argument per level)."""
        references = [getattr(self, f"reference_{i}") for i in range(self.n_references)]
        scales = [getattr(self, f"scale_{i}") for i in range(self.n_references)]
        return aggregate_likelihoods(log_probs, references, self.frame_size, scales)

    def image_scores(self, log_probs, maps):
        """Image anomaly scores ``(N,)`` of the levels' log-likelihoods and their maps."""
        if self.image_score == "map":
            return maps.flatten(1).amax(1)
        return coarsest_scores(log_probs[-1], self.score_maximum)

    def forward(self, *pyramid):
        """Anomaly maps ``(N, H_frame, W_frame)``, float64, of the pyramid's level maps."""
        return self.aggregate(*self._log_probs(pyramid))

    def maps_and_scores(self, *pyramid):
        """``(maps, scores)`` of the pyramid's level maps, as :meth:`forward` and :meth:`scores`."""
        log_probs = self._log_probs(pyramid)
        maps = self.aggregate(*log_probs)
        return maps, self.image_scores(log_probs, maps)

    def scores(self, *pyramid):
        """Image anomaly scores ``(N,)`` of the pyramid's level maps."""
        if self.image_score == "map":
            return self.maps_and_scores(*pyramid)[1]
        # Only the coarsest level's flow is needed.
        last = len(self.levels) - 1
        return coarsest_scores(self.log_prob(last, pyramid[self.levels[last]]), self.score_maximum)


def normalizer(maximum, mean, normalization):
    """``(reference, scale)`` that turn a level's log-likelihoods into log-probabilities.

    ``P = exp((log p - reference) / scale)``, clipped at 1. ``"position"``:
    relative to the best training vector at each position; ``"level"``
    (the paper's code): to the best one of the level; ``"calibrated"``: to
    the best one of the level, in units of the training vectors' mean
    distance to it, so that every level's probabilities have the same
    scale on normal images.
    """
    maximum = maximum.detach().double()
    if normalization == "position":
        return maximum.clone(), torch.ones((), dtype=torch.float64)
    best = maximum.max()
    scale = best - mean if normalization == "calibrated" else torch.ones((), dtype=torch.float64)
    # Never below float32's resolution of the log-likelihoods, nor zero.
    return best.expand_as(maximum).clone(), torch.as_tensor(scale, dtype=torch.float64).clamp_min(1e-6)


def coarsest_scores(log_prob, maximum):
    """Image scores ``(N,)``: the highest ``-log P`` of ``(N, H, W)`` log-likelihoods,
    ``P`` relative to the best training vector at each position."""
    return (maximum.double() - log_prob.double()).clamp_min(0).flatten(1).amax(1)


def aggregate_likelihoods(log_probs, references, size, scales=None):
    """CFLOW-AD's anomaly map from per-level log-likelihoods.

    Parameters
    ----------
    log_probs : list of torch.Tensor of shape (N, H_k, W_k)
        Log-likelihood per dimension at each position of each level.
    references : list of torch.Tensor of shape (H_k, W_k)
        Per level and position, the normalising constant (see
        :func:`normalizer`).
    size : tuple of int
        The input resolution ``(H, W)``.
    scales : list of torch.Tensor, default=None
        Per level, the scale of the log-likelihoods (None: 1).

    Returns
    -------
    maps : torch.Tensor of shape (N, H, W), float64
        ``-log(mean_k P_k)`` with ``P_k = exp((log p_k - reference_k) /
        scale_k)`` clipped at 1 and upsampled bilinearly: higher is more
        anomalous.
    """
    probs = []
    for k, (log_prob, reference) in enumerate(zip(log_probs, references)):
        # Float64: probabilities far below the best training position's
        # must stay distinct from zero and from each other.
        log_p = (log_prob.double() - reference)
        if scales is not None:
            log_p = log_p / scales[k]
        probs.append(torch.exp(log_p.clamp(max=0)))
    # The paper's S = K - sum_k P_k rounds to K in float32 wherever all
    # levels find a position unlikely, tying the most anomalous pixels
    # and images. -log(mean_k P_k) = -log(1 - S / K) is an increasing
    # function of S, so it ranks every pixel and image exactly as S does,
    # without the rounding; the floor keeps it finite. In place: a map at
    # input resolution is the widest tensor of the decoder, and each pass
    # over it costs.
    return upsampled_mean(probs, size).clamp_min_(_MIN_PROB).log_().neg_()


def _warn_if_whitening_is_large(shapes):
    size = sum(4 * height * width * dim**2 for dim, height, width in shapes)
    if size > _WHITEN_WARN_BYTES:
        warnings.warn(
            f"whitening the features of shapes {shapes} holds {size / 1e9:.1f} GB "
            "(H * W * D**2 floats per level, twice that in float64 during fit); pass "
            "whiten=False for the paper's smaller decoder, or use fewer channels or a "
            "smaller image_size.",
            stacklevel=4,
        )


def _warmup_cosine(n_steps):
    """Learning-rate factor: linear warm-up over 5% of steps, then cosine."""
    warmup = max(1, n_steps // 20)

    def factor(step):
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        progress_ = (step - warmup) / max(1, n_steps - warmup)
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress_))

    return factor
