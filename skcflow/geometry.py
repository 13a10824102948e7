"""Where an image lies in the encoder's frame, and the way back.

The encoder sees every image at one size, the frame (the extractor's
``image_size``, as ``(height, width)``). An image is either stretched to the
frame or, with ``keep_aspect=True``, scaled to fit inside it with its aspect
ratio kept and centred on zero padding (letterboxed). Anomaly maps are
computed on the frame; :func:`restore` takes them back to the pixel grid of
the image given, so that they overlay it exactly.

Map resizing and smoothing are linear along each axis, so they are written
here once as matrices (:func:`resize_matrix`, :func:`blur_matrix`): the
detectors apply them with torch, the exported ONNX graphs carry them as
constants, and the torch-free runtime applies them with numpy. This module
needs numpy and Pillow only.
"""

from functools import lru_cache
from numbers import Integral

import numpy as np
from PIL import Image


def frame_shape(image_size):
    """``(height, width)`` of an ``image_size`` given as an int or a pair.

    Raises
    ------
    ValueError
        If it is neither a positive int nor a pair of them.
    """
    if isinstance(image_size, Integral) and not isinstance(image_size, bool):
        shape = (int(image_size),) * 2
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(s, Integral) and not isinstance(s, bool) for s in image_size)
    ):
        shape = tuple(int(s) for s in image_size)
    else:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(
            f"image_size must be a positive int or a (height, width) pair of them; "
            f"got {image_size!r}."
        )
    return shape


def placement(size, frame, keep_aspect):
    """``(top, left, height, width)`` of an image of ``size`` in the frame.

    Stretched images fill the frame; letterboxed ones are scaled by the
    largest factor that fits both sides and centred.
    """
    if not keep_aspect or tuple(size) == tuple(frame):
        return (0, 0, *frame)
    scale = min(frame[0] / size[0], frame[1] / size[1])
    height = min(frame[0], max(1, round(size[0] * scale)))
    width = min(frame[1], max(1, round(size[1] * scale)))
    return ((frame[0] - height) // 2, (frame[1] - width) // 2, height, width)


def _resize_image(array, size, mask):
    """Resize an ``(H, W)`` or ``(H, W, 3)`` array to ``size`` ``(height, width)``.

    NEAREST keeps masks binary. For images, Pillow's BILINEAR widens its
    kernel when shrinking (antialiasing), like torchvision's Resize with
    antialias=True that ImageNet backbones are usually fed with, and unlike
    LANCZOS it cannot overshoot into halos at sharp edges. Pillow resizes
    16-bit images one channel at a time, in 16 bits.
    """
    resample = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
    if array.dtype == np.uint16 and array.ndim == 3:
        return np.stack([_resize_image(array[..., c], size, mask) for c in range(3)], -1)
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def into_frame(array, frame, keep_aspect, mask=False):
    """An image (or mask) file's ``(H, W)`` or ``(H, W, 3)`` array, in the frame.

    Resized with Pillow (see :func:`_resize_image`); letterbox padding is zero.
    """
    top, left, height, width = placement(array.shape[:2], frame, keep_aspect)
    if array.shape[:2] != (height, width):
        array = _resize_image(array, (height, width), mask)
    bottom, right = frame[0] - top - height, frame[1] - left - width
    if top or left or bottom or right:
        array = np.pad(array, [(top, bottom), (left, right)] + [(0, 0)] * (array.ndim - 2))
    return array


@lru_cache(maxsize=256)
def resize_matrix(n_in, n_out):
    """``(n_out, n_in)`` float64 matrix of bilinear resizing along one axis.

    Pixel centres are aligned (``align_corners=False``, as
    ``torch.nn.functional.interpolate``), sources outside the input clamped
    to its border; no antialiasing, which maps do not need.
    """
    source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(int), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    weight = source - low
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), low), 1 - weight)
    np.add.at(matrix, (np.arange(n_out), high), weight)
    matrix.flags.writeable = False
    return matrix


@lru_cache(maxsize=64)
def blur_matrix(n, sigma):
    """``(n, n)`` float64 matrix of Gaussian smoothing along one axis.

    The Gaussian of ``sigma`` pixels is truncated at 4 sigma, or at the
    axis' length when that is shorter, and borders are reflected
    (``torch.nn.functional.pad(mode="reflect")``: the edge pixel is not
    repeated), as PaDiM's and SPADE's map smoothing does.
    """
    radius = min(int(4 * sigma + 0.5), n - 1)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    source = np.arange(n)[:, None] + offsets[None, :]
    source = np.where(source < 0, -source, source)
    source = np.where(source > n - 1, 2 * (n - 1) - source, source)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (np.repeat(np.arange(n), len(offsets)), source.ravel()), np.tile(kernel, n))
    matrix.flags.writeable = False
    return matrix


@lru_cache(maxsize=64)
def smooth_resize_matrix(n_in, n_out, sigma):
    """:func:`resize_matrix`, then :func:`blur_matrix`, as one matrix."""
    matrix = blur_matrix(n_out, sigma) @ resize_matrix(n_in, n_out)
    matrix.flags.writeable = False
    return matrix


def restore(maps, size, frame, keep_aspect):
    """Maps ``(N, H_frame, W_frame)`` on the frame, back on an image of ``size``.

    The padding of a letterboxed image is cut off, then the maps are
    resized bilinearly (:func:`resize_matrix`) to ``size``.

    Parameters
    ----------
    maps : ndarray of shape (N, H_frame, W_frame)
    size, frame : tuple of int
        ``(height, width)`` of the image and of the frame.
    keep_aspect : bool

    Returns
    -------
    maps : ndarray of shape (N, *size), of the maps' dtype
    """
    size = tuple(size)
    if size == tuple(frame):
        return maps
    top, left, height, width = placement(size, frame, keep_aspect)
    maps = maps[:, top : top + height, left : left + width]
    rows = resize_matrix(height, size[0]).astype(maps.dtype)
    cols = resize_matrix(width, size[1]).astype(maps.dtype)
    return np.matmul(np.matmul(rows, maps), cols.T)
