"""Datasets: MVTec AD-layout folders, a user's own images, synthetic defects.

- :func:`load_mvtec` reads any dataset stored in the MVTec AD folder layout
  (MVTec AD itself, the Magnetic Tile Defects dataset, a user's own data);
- :func:`load_images` reads a user's own images (a folder, a file, a list);
- :func:`make_defects` generates synthetic textured surfaces with injected
  defects, so that examples and tests have data on any machine.

All three return images as arrays of shape ``(n, height, width, 3)``:
``uint8``, or ``uint16`` where the files hold 16 bits per sample (TIFF and
PNG from 10 to 16-bit cameras), never reduced to 8 bits; and, where there
is ground truth, masks as ``uint8`` arrays of 0 and 1. Files are read by
:mod:`skcflow.readers`.

Nothing is silently dropped: a file that is not an image (other than hidden
files, whose name starts with ``"."``), an image that cannot be decoded and a
defective image without its mask are errors naming the file, unless the
caller of :func:`load_images` asks to skip such files, in which case each one
is reported in a warning and in the result.
"""

import numbers
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.utils import Bunch, check_random_state

from .geometry import frame_shape
from .readers import read_images, read_into_frame, read_mask, stack_images, visible_entries

__all__ = ["load_images", "load_mvtec", "make_defects", "paste_defects"]

_DEFECT_KINDS = ("scratch", "spot", "crack", "blob")


def _check_image_size(image_size):
    """``(height, width)`` of a loader's ``image_size``, or None to keep sizes."""
    return None if image_size is None else frame_shape(image_size)


def load_mvtec(root, category, split="train", image_size=256, keep_aspect=False):
    """Load one category of a dataset in the MVTec AD folder layout.

    The layout is::

        <root>/<category>/train/good/*
        <root>/<category>/test/<defect>/*          (including test/good)
        <root>/<category>/ground_truth/<defect>/<stem>_mask.png

    Every folder under ``<split>`` is a defect type; ``"good"`` holds normal
    images. Where ``ground_truth`` exists, each image outside ``good`` needs
    its mask, whose non-zero pixels are anomalous. Where the category has no
    ``ground_truth`` folder at all (defective images without pixel masks),
    the test split has image labels only and ``masks`` is ``None``:
    unknown, not empty. Images are sorted by defect folder name, then file
    name.

    Parameters
    ----------
    root : str or path-like
        Folder holding the category folders, e.g. ``"data/mvtec_ad"``.
    category : str
        Category folder name, e.g. ``"bottle"``.
    split : {"train", "test"}, default="train"
        Which split to load.
    image_size : int, (height, width) or None, default=256
        Images and masks are resized to ``image_size x image_size``, or to
        ``(height, width)`` (images bilinearly with antialiasing, masks with
        nearest neighbour, so masks follow images exactly). ``None`` keeps
        the original size, which all images must then share.
    keep_aspect : bool, default=False
        Scale each image to fit inside ``image_size`` with its aspect ratio
        kept, centred on zero padding (see :mod:`skcflow.geometry`), instead
        of stretching it; use the same setting on the
        :class:`~skcflow.FeatureExtractor`.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With attributes

        - ``images``: array of shape ``(n, H, W, 3)``, RGB (grayscale,
          palette and RGBA images are converted, alpha dropped), ``uint8``,
          or ``uint16`` for 16-bit files;
        - ``target``: ``int`` array of shape ``(n,)``, 0 for ``good`` images
          and 1 for images in a defect folder (even if their mask is empty);
        - ``masks``: ``uint8`` array of shape ``(n, H, W)`` of 0 and 1, all
          zeros for ``good`` images; ``None`` when the category has no
          ground truth;
        - ``defect_type``: list of ``n`` defect folder names;
        - ``filenames``: list of ``n`` full image paths;
        - ``sizes``: list of ``n`` original ``(height, width)``;
        - ``DESCR``: a short description.

    Raises
    ------
    FileNotFoundError
        If the root, category or split folder, or the mask of a defective
        image (where there is a ground_truth folder), is missing.
    ValueError
        If ``split`` or ``image_size`` is invalid, a visible file is not an
        image, an image cannot be decoded, a mask's size differs from its
        image's, no image is found, or sizes or bit depths differ (sizes
        only with ``image_size=None``).

    Warns
    -----
    UserWarning
        For non-empty masks that become empty once shrunk to ``image_size``
        (nearest-neighbour resizing, as usual for MVTec AD benchmarks, can
        miss every pixel of a thin defect), and, when loading the test split,
        for masks under ``ground_truth`` that belong to no test image.

    Examples
    --------
    >>> from skcflow.datasets import load_mvtec
    >>> test = load_mvtec("data/mvtec_ad", "bottle", "test", 64)  # doctest: +SKIP
    >>> test.images.shape, test.masks.shape, int(test.target.sum())  # doctest: +SKIP
    ((83, 64, 64, 3), (83, 64, 64), 63)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    frame = _check_image_size(image_size)
    category_dir = Path(root) / category
    split_dir = category_dir / split
    for folder, what in ((Path(root), "Root"), (category_dir, "Category"),
                         (split_dir, "Split")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {folder}")
    ground_truth_dir = category_dir / "ground_truth"
    has_ground_truth = ground_truth_dir.is_dir()

    images, masks, defect_type, filenames, sizes, used_masks = [], [], [], [], [], set()
    vanished = []
    for defect_dir in visible_entries(split_dir):
        if not defect_dir.is_dir():
            raise ValueError(
                f"{defect_dir} is a file directly in the split folder, where "
                "only defect folders (such as 'good') are expected."
            )
        defect = defect_dir.name
        for path in visible_entries(defect_dir):
            image, size = read_into_frame(path, frame, keep_aspect)
            if defect == "good" or not has_ground_truth:
                mask = np.zeros(image.shape[:2], dtype=np.uint8)
            else:
                mask_path = ground_truth_dir / defect / f"{path.stem}_mask.png"
                if not mask_path.is_file():
                    raise FileNotFoundError(
                        f"Mask {mask_path} of defective image {path} not found."
                    )
                mask, mask_size = read_into_frame(mask_path, frame, keep_aspect, mask=True)
                if mask_size != size:
                    raise ValueError(
                        f"Mask {mask_path} is {mask_size[0]}x{mask_size[1]} (height x "
                        f"width) but its image {path} is {size[0]}x{size[1]}."
                    )
                if not mask.any() and frame is not None:
                    vanished.append(mask_path)
                used_masks.add(mask_path)
            images.append(image)
            masks.append(mask)
            defect_type.append(defect)
            filenames.append(str(path))
            sizes.append(size)
    if not images:
        raise ValueError(f"No images found under {split_dir}.")
    # Nearest-neighbour shrinking can miss every pixel of a thin or tiny
    # defect; an empty mask in the file itself (real in some datasets) is not
    # worth a warning, so re-read the few empty ones at their own size.
    vanished = [str(p) for p in vanished if read_mask(p).any()]
    if vanished:
        warnings.warn(
            f"{len(vanished)} non-empty mask(s) became empty when resized to "
            f"{frame[0]}x{frame[1]} (defects too thin or small for that "
            f"size); their images keep target 1. Pass a larger image_size to "
            f"keep them: {vanished[:5]}",
            UserWarning,
            stacklevel=2,
        )
    if split == "test" and has_ground_truth:
        unused = [
            str(p)
            for folder in visible_entries(ground_truth_dir)
            if folder.is_dir()
            for p in visible_entries(folder)
            if p not in used_masks
        ]
        if unused:
            warnings.warn(
                f"{len(unused)} file(s) under {ground_truth_dir} belong to no "
                f"defective test image and were not used: {unused[:5]}",
                UserWarning,
                stacklevel=2,
            )

    images = stack_images(images, filenames)
    target = np.array([d != "good" for d in defect_type], dtype=int)
    masks_known = has_ground_truth or not target.any()
    height, width = images.shape[1:3]
    return Bunch(
        images=images,
        target=target,
        masks=np.stack(masks) if masks_known else None,
        defect_type=defect_type,
        filenames=filenames,
        sizes=sizes,
        DESCR=(
            f"Category {category!r}, {split} split, of the MVTec AD-layout "
            f"dataset in {root}: {len(target)} images ({int(target.sum())} "
            f"anomalous) of {height}x{width} pixels (height x width)"
            + ("." if masks_known else ", without pixel masks (no ground_truth folder).")
        ),
    )


def load_images(paths_or_folder, image_size=256, errors="raise", keep_aspect=False):
    """Load a user's own images.

    Parameters
    ----------
    paths_or_folder : str, path-like or list of them
        A folder (all its files, sorted by name; hidden files, whose name
        starts with ``"."``, are ignored), a single image file, or a list of
        image files (kept in the given order). Supported extensions are
        ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif`` and ``.tiff`` in
        any case; a TIFF must hold one image (a multi-page file is an error
        naming it).
    image_size : int, (height, width) or None, default=256
        Images are resized bilinearly, with antialiasing, to
        ``image_size x image_size`` or ``(height, width)``. ``None`` keeps
        the original size, which all images must then share.
    errors : {"raise", "skip"}, default="raise"
        What to do with a missing file, a file that is not an image or an
        image that cannot be decoded (e.g. truncated): ``"raise"`` an error
        naming it, or ``"skip"`` it with a :class:`UserWarning` naming it and
        record it in ``skipped``.
    keep_aspect : bool, default=False
        Letterbox each image into ``image_size`` instead of stretching it
        (see :func:`load_mvtec`).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With attributes ``images`` (``(n, H, W, 3)``, RGB, ``uint8``, or
        ``uint16`` for 16-bit files), ``filenames`` (list of ``n`` paths),
        ``sizes`` (list of ``n`` original ``(height, width)``) and
        ``skipped`` (list of ``(path, reason)`` pairs, empty with
        ``errors="raise"``).

    Raises
    ------
    FileNotFoundError
        If ``paths_or_folder`` or, with ``errors="raise"``, a listed file does
        not exist.
    ValueError
        If, with ``errors="raise"``, a file is not a readable image; if no
        image is loaded; or if bit depths differ, or sizes with
        ``image_size=None``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skcflow.datasets import load_images
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     Image.new("L", (40, 30)).save(os.path.join(folder, "a.png"))
    ...     Image.new("RGB", (50, 50)).save(os.path.join(folder, "b.jpg"))
    ...     data = load_images(folder, image_size=32)
    >>> data.images.shape, data.images.dtype
    ((2, 32, 32, 3), dtype('uint8'))
    >>> [os.path.basename(f) for f in data.filenames], data.sizes
    (['a.png', 'b.jpg'], [(30, 40), (50, 50)])
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}.")
    frame = _check_image_size(image_size)
    images, filenames, sizes, skipped = read_images(paths_or_folder, frame, keep_aspect, errors)
    return Bunch(images=images, filenames=filenames, sizes=sizes, skipped=skipped)


def _spectral_noise(rng, n, size, gain):
    """``n`` stationary random fields of unit variance, filtered by ``gain``.

    Filtering white noise in the Fourier domain shapes all images in one
    vectorised call; ``gain`` is a function of the frequency components
    ``(fx, fy)``, in cycles per image, broadcast to ``(n, size, size//2+1)``.
    The fields wrap around, so they have no border artefacts.
    """
    fy = np.fft.fftfreq(size)[:, None] * size
    fx = np.fft.rfftfreq(size)[None, :] * size
    # Gaussian gains far from their pass band rightly underflow; zeroing the
    # negligible ones also keeps the product below from underflowing.
    with np.errstate(under="ignore"):
        gains = gain(fx, fy)
    gains[gains < 1e-12] = 0.0
    spectrum = np.fft.rfft2(rng.standard_normal((n, size, size)))
    fields = np.fft.irfft2(spectrum * gains, s=(size, size))
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    return fields / fields.std(axis=(1, 2), keepdims=True)


def _draw_surfaces(rng, n, size):
    """``n`` images of one brushed, grained metal product, floats in [0, 1].

    Luminance is kept in [0.3, 0.75] so that every defect pixel still
    changes by 0.25 or more after clipping to [0, 1] (see `_defect_change`).
    """
    # One product: a shared streak direction and grain frequency, with small
    # per-image jitter as if parts were placed by hand under a fixed camera.
    angle = 0.35 + rng.normal(0.0, 0.03, size=(n, 1, 1))
    cos, sin = np.cos(angle), np.sin(angle)

    def streak_gain(fx, fy):
        # Long along the brushing direction, fine across it.
        along = fx * cos + fy * sin
        radial = (fx**2 + fy**2) / (size / 3) ** 2
        return np.exp(-0.5 * (along / 1.5) ** 2 - 0.5 * radial)

    streaks = _spectral_noise(rng, n, size, streak_gain)
    mottle = _spectral_noise(
        rng, n, size, lambda fx, fy: np.exp(-0.5 * (fx**2 + fy**2) / 3.0**2)
    )
    yy, xx = np.mgrid[0:size, 0:size] / size
    across = -xx * sin + yy * cos
    frequency = 5.0 + rng.normal(0.0, 0.2, size=(n, 1, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1))
    grain = np.sin(2 * np.pi * frequency * across + phase + 0.8 * mottle)
    brightness = 0.525 + rng.normal(0.0, 0.02, size=(n, 1, 1))
    luminance = (
        brightness
        + 0.035 * mottle
        + 0.06 * streaks
        + 0.05 * grain
        + 0.015 * rng.standard_normal((n, size, size))
    )
    luminance = np.clip(luminance, 0.3, 0.75)
    tint = np.array([1.0, 0.93, 0.82]) + rng.normal(0.0, 0.01, size=(n, 1, 1, 3))
    return luminance[..., None] * tint


def _stroke_mask(points, size, rng):
    """Pixels within a thin stroke through ``points`` (``(m, 2)`` as x, y)."""
    # Densify so that consecutive samples are under half a pixel apart.
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    dense = np.concatenate(
        [
            np.linspace(a, b, int(np.ceil(2 * d)) + 1)
            for a, b, d in zip(points[:-1], points[1:], steps)
        ]
    )
    xy = np.clip(np.round(dense).astype(int), 0, size - 1)
    centre = np.zeros((size, size), dtype=bool)
    centre[xy[:, 1], xy[:, 0]] = True
    half_width = max(1.0, size / 256) * rng.uniform(1.0, 1.5)
    return ndimage.distance_transform_edt(~centre) <= half_width


def _scratch_mask(rng, size):
    """A thin, gently bent stroke (quadratic Bezier curve)."""
    centre = rng.uniform(0.35, 0.65, size=2) * size
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    half_length = rng.uniform(0.2, 0.3) * size
    start, end = centre - half_length * direction, centre + half_length * direction
    control = centre + rng.uniform(-0.15, 0.15) * size * normal
    t = np.linspace(0.0, 1.0, 64)[:, None]
    curve = (1 - t) ** 2 * start + 2 * t * (1 - t) * control + t**2 * end
    return _stroke_mask(curve, size, rng)


def _crack_mask(rng, size):
    """A jagged random-walk polyline with one side branch."""

    def walk(start, angle, n_steps):
        turns = np.cumsum(rng.normal(0.0, 0.35, size=n_steps))
        steps = size / 24 * np.stack([np.cos(angle + turns), np.sin(angle + turns)], 1)
        path = start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        return np.clip(path, 0.05 * size, 0.95 * size)

    trunk = walk(rng.uniform(0.3, 0.7, size=2) * size, rng.uniform(0, 2 * np.pi),
                 rng.randint(10, 17))
    fork = trunk[rng.randint(2, len(trunk) - 2)]
    branch = walk(fork, rng.uniform(0, 2 * np.pi), rng.randint(3, 7))
    return _stroke_mask(trunk, size, rng) | _stroke_mask(branch, size, rng)


def _ellipse_distance(rng, size, radius_range):
    """Normalised distance to a random ellipse's centre (1 on its border)."""
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = rng.uniform(0.2, 0.8, size=2) * size
    radius = rng.uniform(*radius_range) * size
    aspect = rng.uniform(0.75, 1.0)
    angle = rng.uniform(0.0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return np.hypot(u / radius, v / (aspect * radius))


def _spot_mask(rng, size):
    """A filled, slightly elliptical disc."""
    return _ellipse_distance(rng, size, (0.045, 0.08)) <= 1.0


def _blob_mask(rng, size):
    """An irregular stain: an ellipse whose border is warped by smooth noise."""
    warp = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 20)
    warp = np.clip(warp / warp.std(), -1.0, 1.0)
    return _ellipse_distance(rng, size, (0.08, 0.14)) + 0.25 * warp <= 1.0


_DEFECT_MASKS = {
    "scratch": _scratch_mask,
    "spot": _spot_mask,
    "crack": _crack_mask,
    "blob": _blob_mask,
}


def _defect_change(rng, kind, n_pixels):
    """RGB change of each defect pixel, at least 0.25 in some channel.

    Surfaces keep luminance in [0.3, 0.75] and channels at most 0.78, so even
    after clipping to [0, 1] every defect pixel changes by 0.25 or more.
    """
    # A little per-pixel variation, always adding to the change, so that
    # defects are not flat stickers.
    strength = 1.0 + rng.uniform(0.0, 0.25, size=(n_pixels, 1))
    if kind == "blob":
        # Bluish corrosion or greenish oxidation; both leave the metal's
        # luminance texture visible underneath.
        colours = np.array([[-0.3, -0.05, 0.3], [-0.28, 0.12, -0.05]])
        return strength * colours[rng.randint(len(colours))]
    # Scratches mostly catch the light, cracks are always dark, spots either.
    bright = {"scratch": 0.7, "spot": 0.5, "crack": 0.0}[kind]
    sign = 1.0 if rng.uniform() < bright else -1.0
    return sign * rng.uniform(0.3, 0.35) * strength * np.ones(3)


def _check_count(value, name, minimum):
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or value < minimum
    ):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def make_defects(
    n_train=60, n_test=40, image_size=128, anomaly_ratio=0.5, random_state=None
):
    """Generate a synthetic anomaly-detection dataset of textured surfaces.

    The images are **synthetic**, not photographs: every image shows the same
    made-up "product", a brushed and grained metal surface (a smooth noise
    field, oriented streaks and a warped grain pattern), with mild per-image
    variation of brightness, tint, grain phase and orientation. Training
    images are all normal. About ``anomaly_ratio`` of the test images get one
    defect each, the kinds being used in turn, in random order:

    - ``"scratch"``: a thin bright (sometimes dark) curve;
    - ``"spot"``: a dark or bright elliptical disc;
    - ``"crack"``: a dark, jagged random-walk polyline with a branch;
    - ``"blob"``: an irregular bluish or greenish stain.

    A defect's mask is drawn first and the defect painted only inside it, so
    the mask is exactly the set of changed pixels; each of them changes by at
    least 0.25 (on a 0-1 scale) in some channel, and a defect covers at least
    0.3% of the image. The normal surface behind a test image does not
    depend on ``anomaly_ratio``: outside the mask, a defective image equals
    the same image generated with ``anomaly_ratio=0``.

    Parameters
    ----------
    n_train : int, default=60
        Number of (normal) training images.
    n_test : int, default=40
        Number of test images.
    image_size : int, default=128
        Side of the square images, at least 32.
    anomaly_ratio : float, default=0.5
        Fraction of test images with a defect, rounded to a whole number.
    random_state : int, RandomState instance or None, default=None
        Seed for reproducible data: the same seed gives identical arrays.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With ``train`` and ``test``, each a Bunch in the format of
        :func:`load_mvtec` (``images``, ``target``, ``masks``,
        ``defect_type``, ``filenames`` such as ``"synthetic/test/crack/007"``
        and ``DESCR``), and a ``DESCR`` of the whole dataset. Test defects
        are at random positions in the test set.

    Examples
    --------
    >>> from skcflow.datasets import make_defects
    >>> data = make_defects(n_train=8, n_test=8, image_size=64, random_state=0)
    >>> data.train.images.shape, data.train.images.dtype
    ((8, 64, 64, 3), dtype('uint8'))
    >>> data.test.masks.shape, data.test.target.tolist()
    ((8, 64, 64), [1, 1, 1, 0, 0, 0, 1, 0])
    >>> data.test.defect_type[:4], data.test.filenames[0]
    (['spot', 'blob', 'crack', 'good'], 'synthetic/test/spot/000')
    """
    _check_count(n_train, "n_train", 1)
    _check_count(n_test, "n_test", 1)
    _check_count(image_size, "image_size", 32)
    if not isinstance(anomaly_ratio, numbers.Real) or not 0 <= anomaly_ratio <= 1:
        raise ValueError(
            f"anomaly_ratio must be a number in [0, 1], got {anomaly_ratio!r}."
        )
    rng = check_random_state(random_state)
    # Separate streams keep the surfaces independent of anomaly_ratio.
    surface_rng, defect_rng = (
        np.random.RandomState(seed) for seed in rng.randint(2**31 - 1, size=2)
    )
    surfaces = _draw_surfaces(surface_rng, n_train + n_test, image_size)
    test_images = surfaces[n_train:]

    n_anomalous = int(round(anomaly_ratio * n_test))
    positions = defect_rng.permutation(n_test)[:n_anomalous]
    kinds = list(np.resize(_DEFECT_KINDS, n_anomalous))
    defect_rng.shuffle(kinds)
    masks = np.zeros((n_test, image_size, image_size), dtype=np.uint8)
    defect_type = ["good"] * n_test
    for position, kind in zip(positions, kinds):
        mask = _DEFECT_MASKS[kind](defect_rng, image_size)
        change = _defect_change(defect_rng, kind, int(mask.sum()))
        test_images[position][mask] = np.clip(
            test_images[position][mask] + change, 0.0, 1.0
        )
        masks[position] = mask
        defect_type[position] = str(kind)

    descr = (
        f"Synthetic data from skcflow.datasets.make_defects (not real images): "
        f"{n_train} normal training and {n_test} test images ({n_anomalous} "
        f"with a defect) of a brushed-metal surface, {image_size}x{image_size}."
    )
    digits = max(3, len(str(max(n_train, n_test) - 1)))

    def split(name, images, split_masks, split_types):
        target = np.array([t != "good" for t in split_types], dtype=int)
        return Bunch(
            images=np.round(images * 255).astype(np.uint8),
            target=target,
            masks=split_masks,
            defect_type=split_types,
            filenames=[
                f"synthetic/{name}/{kind}/{i:0{digits}d}"
                for i, kind in enumerate(split_types)
            ],
            DESCR=descr,
        )

    return Bunch(
        train=split(
            "train",
            surfaces[:n_train],
            np.zeros((n_train, image_size, image_size), dtype=np.uint8),
            ["good"] * n_train,
        ),
        test=split("test", test_images, masks, defect_type),
        DESCR=descr,
    )


def paste_defects(images, random_state=None):
    """Synthetic defects on real normal images, with exact masks.

    For model selection when only good images exist (see
    :func:`skcflow.model_selection.synthetic_split`). Each image gets one
    defect, the kinds of :func:`make_defects` used in turn, in random order,
    and drawn in the same shapes; their appearance comes from the image
    itself, so that they are as subtle as the image's own contrast:

    - ``"scratch"``: a thin curve, brighter (or darker) by 2 to 4 times the
      image's own standard deviation;
    - ``"crack"``: a jagged dark line, the image's texture darkened to 15 to
      45% of its level;
    - ``"spot"``: a disc mostly replaced by the image's mean level shifted by
      2.5 to 4 standard deviations;
    - ``"blob"``: an irregular patch of the image's own texture, cut from
      elsewhere in it, 20% lighter or darker (CutPaste).

    Parameters
    ----------
    images : ndarray of shape (n, H, W, 3)
        ``uint8``, ``uint16`` or float images in ``[0, 1]``.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` (the defective copies, of the input's dtype), ``masks``
        (``uint8`` 0/1, exactly the pixels that changed), ``target`` (all 1)
        and ``defect_type``.

    Examples
    --------
    >>> from skcflow.datasets import make_defects, paste_defects
    >>> good = make_defects(n_train=4, n_test=1, image_size=64, random_state=0).train.images
    >>> pasted = paste_defects(good, random_state=0)
    >>> pasted.images.shape, bool((pasted.images != good).any(-1).sum() == pasted.masks.sum())
    ((4, 64, 64, 3), True)
    """
    rng = check_random_state(random_state)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be of shape (n, height, width, 3); got {images.shape}.")
    if max(images.shape[1:3]) < 2:
        raise ValueError(f"paste_defects needs images of at least 2 pixels along one side; got "
                         f"{images.shape[1]} x {images.shape[2]} pixels.")
    full = np.iinfo(images.dtype).max if images.dtype.kind == "u" else 1.0
    kinds = list(np.resize(_DEFECT_KINDS, len(images)))
    rng.shuffle(kinds)
    out = np.empty_like(images)
    masks = np.zeros(images.shape[:3], dtype=np.uint8)
    for i, (image, kind) in enumerate(zip(images, kinds)):
        mask = _pasted_mask(rng, kind, *image.shape[:2])
        painted = _paint(image.astype(np.float64) / full, mask, kind, rng) * full
        out[i] = np.rint(painted) if images.dtype.kind == "u" else painted
        masks[i] = (out[i] != image).any(-1)
    return Bunch(images=out, masks=masks, target=np.ones(len(images), dtype=int),
                 defect_type=[str(k) for k in kinds])


# Draws of a defect's shape before paste_defects gives up on an image
# too small for it (a shape can miss an image a few pixels wide).
_MASK_ATTEMPTS = 1000


def _pasted_mask(rng, kind, height, width):
    """A defect of ``kind`` drawn on a square of the longer side, cut to the
    image around its centre."""
    side = max(height, width)
    for _ in range(_MASK_ATTEMPTS):
        mask = _DEFECT_MASKS[kind](rng, side)
        rows, cols = np.nonzero(mask)
        if not len(rows):
            continue
        top = int(np.clip(rows.mean() - height / 2, 0, side - height))
        left = int(np.clip(cols.mean() - width / 2, 0, side - width))
        mask = mask[top : top + height, left : left + width]
        if mask.sum() >= 0.001 * height * width:
            return mask
    raise ValueError(f"paste_defects could not draw a {kind} on images of {height} x {width} pixels "
                     f"in {_MASK_ATTEMPTS} attempts: the images are too small for its defects.")


def _paint(image, mask, kind, rng):
    """``image`` (floats in [0, 1]) with a ``kind`` defect painted inside ``mask``."""
    flat = image.reshape(-1, 3)
    sigma, mean = flat.std(0) + 4 / 255, flat.mean(0)
    image = image.copy()
    sign = 1.0 if rng.uniform() < 0.7 else -1.0
    if kind == "scratch":
        image[mask] += sign * rng.uniform(2, 4) * sigma
    elif kind == "crack":
        image[mask] *= rng.uniform(0.15, 0.45)
    elif kind == "spot":
        image[mask] = 0.25 * image[mask] + 0.75 * (mean + sign * rng.uniform(2.5, 4) * sigma)
    else:
        height, width = mask.shape
        shift = (int(rng.randint(height // 4, 3 * height // 4 + 1)),
                 int(rng.randint(width // 4, 3 * width // 4 + 1)))
        image[mask] = np.roll(image, shift, axis=(0, 1))[mask] * (1 + sign * 0.2)
    return np.clip(image, 0, 1)
