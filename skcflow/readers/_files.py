"""Files and folders of images, read into one frame and stacked.

What :func:`skcflow.load_images` and the torch-free ONNX runtime share:
listing a folder, reading each file into the frame, skipping or refusing
unusable files, and stacking the results.
"""

import warnings
from pathlib import Path

import numpy as np

from ..geometry import into_frame
from ._errors import UnusableFileError
from ._formats import read_image, read_mask


def visible_entries(folder):
    """Entries of ``folder`` except hidden ones, sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def read_into_frame(path, frame, keep_aspect=False, mask=False):
    """Read one image (or mask) file into the frame.

    Returns ``(array, original_size)`` with ``original_size`` as
    ``(height, width)``. Images become RGB ``(H, W, 3)`` of their own dtype
    (grey ones repeated over the channels); masks become ``uint8`` ``(H, W)``
    of 0 and 1. ``frame=None`` keeps the file's size.
    """
    if mask:
        array = read_mask(path).astype(np.uint8)
    else:
        array = read_image(path)
    original_size = array.shape[:2]
    if frame is not None:
        array = into_frame(array, frame, keep_aspect, mask)
    if not mask and array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array, original_size


def stack_images(images, filenames):
    """Stack arrays of one size and dtype; sizes differ only with image_size=None."""
    for what, key, hint in (
        ("sizes", lambda image: image.shape[:2],
         "Pass image_size=<int> or (height, width) to resize them to a common size."),
        ("bit depths", lambda image: image.dtype,
         "Convert the files to one bit depth."),
    ):
        kinds = {}
        for image, filename in zip(images, filenames):
            kinds.setdefault(key(image), filename)
        if len(kinds) > 1:
            examples = "; ".join(
                f"{_describe(kind)} ({name})" for kind, name in list(kinds.items())[:3]
            )
            raise ValueError(
                f"Images must share one size and bit depth to be stacked, but {len(kinds)} "
                f"{what} were found, e.g. {examples}. {hint}"
                + (" Sizes are height x width." if what == "sizes" else "")
            )
    return np.stack(images)


def _describe(kind):
    if isinstance(kind, tuple):
        return f"{kind[0]}x{kind[1]}"
    return f"{np.iinfo(kind).bits}-bit"


def is_paths(value):
    """Whether ``value`` names files: a path, or a non-empty list of paths."""
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, (str, bytes)) or hasattr(v, "__fspath__") for v in value)


def list_files(paths_or_folder):
    """``(paths, source)``: the files a folder, a file or a list of them names.

    Folders (given alone or in a list) hold their visible files, sorted by
    name; ``source`` describes what was given, for messages.
    """
    single = isinstance(paths_or_folder, (str, bytes)) or hasattr(paths_or_folder, "__fspath__")
    entries = [Path(paths_or_folder)] if single else [Path(p) for p in paths_or_folder]
    source = entries[0] if single else "the given list of paths"
    if single and not entries[0].exists():
        raise FileNotFoundError(f"No such file or folder: {source}")
    paths = []
    for entry in entries:
        paths.extend(visible_entries(entry) if entry.is_dir() else [entry])
    return paths, source


def read_images(paths_or_folder, frame, keep_aspect=False, errors="raise"):
    """Read a folder, a file or a list of them into the frame.

    Returns ``(images, filenames, sizes, skipped)``: the stacked images, the
    files read, their original ``(height, width)`` and the ``(path,
    reason)`` of each file skipped with ``errors="skip"`` (each also a
    warning naming it). See :func:`skcflow.load_images`.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}.")
    paths, source = list_files(paths_or_folder)
    images, filenames, sizes, skipped = [], [], [], []
    for path in paths:
        try:
            image, size = read_into_frame(path, frame, keep_aspect)
        except (FileNotFoundError, UnusableFileError) as exc:
            if errors == "raise":
                raise
            skipped.append((str(path), str(exc)))
            warnings.warn(f"Skipping {path}: {exc}", UserWarning, stacklevel=3)
            continue
        images.append(image)
        filenames.append(str(path))
        sizes.append(size)
    if not images:
        raise ValueError(
            f"No image could be loaded from {source}" + (f"; skipped: {skipped}" if skipped else ".")
        )
    return stack_images(images, filenames), filenames, sizes, skipped
