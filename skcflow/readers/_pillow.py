"""PNG, JPEG and BMP through Pillow."""

import numpy as np
from PIL import Image

from ._errors import UnusableFileError

# What Pillow raises for a file it cannot decode: UnidentifiedImageError and
# "image file is truncated" are OSErrors; some plugins raise SyntaxError or
# ValueError on corrupt headers. Truncated files are only detected because
# skcflow never enables ``ImageFile.LOAD_TRUNCATED_IMAGES``.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# Pillow decodes these raw modes of 16-bit colour PNGs into 8-bit images.
_DEEP_COLOUR = ("RGB;16B", "RGBA;16B")


def read_pillow(path):
    """``(H, W)`` or ``(H, W, 3)`` uint8 or uint16 array of a Pillow-readable file.

    EXIF orientation is ignored on purpose: masks are drawn on the stored
    pixel grid, so rotating an image would misalign it from its mask.
    """
    try:
        with Image.open(path) as opened:
            if opened.format == "PNG" and opened.tile and opened.tile[0].args in _DEEP_COLOUR:
                return _read_deep_png(path)
            opened.load()
            return _as_array(opened, path)
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as exc:
        raise UnusableFileError(f"Cannot read image {path}: {exc}") from exc


def _as_array(image, path):
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if image.mode in ("I", "F"):
        values = np.asarray(image)
        if image.mode == "I" and values.min() >= 0 and values.max() <= np.iinfo(np.uint16).max:
            return values.astype(np.uint16)
        raise UnusableFileError(
            f"{path} holds {'32-bit integer' if image.mode == 'I' else 'floating-point'} "
            "pixels; skcflow reads unsigned 8 and 16-bit images: convert it to one of those."
        )
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    if image.mode == "LA":
        return np.asarray(image)[..., 0]
    return np.asarray(image.convert("RGB"))


def _read_deep_png(path):
    import imagecodecs

    try:
        return imagecodecs.png_decode(path.read_bytes())
    except Exception as exc:  # imagecodecs raises its own PngError for corrupt files
        raise UnusableFileError(f"Cannot read image {path}: {exc}") from exc
