"""One file, by its extension's reader."""

from pathlib import Path

import numpy as np

from ._errors import UnusableFileError
from ._pillow import read_pillow
from ._tiff import read_tiff

_READERS = {
    ".bmp": read_pillow,
    ".jpeg": read_pillow,
    ".jpg": read_pillow,
    ".png": read_pillow,
    ".tif": read_tiff,
    ".tiff": read_tiff,
}
EXTENSIONS = tuple(_READERS)


def read_image(path):
    """Read an image file at full precision.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    image : ndarray of shape (H, W) or (H, W, 3), uint8 or uint16

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    UnusableFileError
        If it is not a regular file, has no supported extension, or cannot
        be decoded as a single grey or colour image of 8 or 16 bits.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise UnusableFileError(f"{path} is not a regular file, so not an image.")
        raise FileNotFoundError(f"Image file not found: {path}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise UnusableFileError(
            f"{path} is not an image file (supported extensions: {', '.join(EXTENSIONS)}); "
            "remove it, or hide it by starting its name with '.'."
        )
    image = reader(path)
    if image.ndim == 3 and image.shape[-1] in (2, 4):
        image = image[..., :-1]  # alpha
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise UnusableFileError(
            f"{path} holds an array of shape {image.shape}, not a grey or colour image."
        )
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype not in (np.uint8, np.uint16):
        raise UnusableFileError(
            f"{path} holds {image.dtype} pixels; skcflow reads unsigned 8 and 16-bit "
            "images: convert it to one of those."
        )
    return image


def read_mask(path):
    """Read a ground-truth mask: ``True`` where any channel is non-zero.

    Returns
    -------
    mask : ndarray of shape (H, W), bool
    """
    mask = read_image(path)
    return mask.any(-1) if mask.ndim == 3 else mask > 0
