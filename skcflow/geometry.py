"""Where an image lies in the encoder's frame, and the way back.

The encoder sees every image at one size, the frame (the extractor's
``image_size``, as ``(height, width)``). An image is either stretched to the
frame or, with ``keep_aspect=True``, scaled to fit inside it with its aspect
ratio kept and centred on zero padding (letterboxed). Anomaly maps are
computed on the frame; :func:`restore` takes them back to the pixel grid of
the image given, so that they overlay it exactly.
"""

from numbers import Integral

import torch
import torch.nn.functional as F


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


def to_frame(images, frame, keep_aspect):
    """Resize float images ``(N, C, H, W)`` into the frame.

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
    return F.pad(images, (left, right, top, bottom)) if bottom or right or top or left else images


def restore(maps, size, frame, keep_aspect):
    """Maps ``(N, H_frame, W_frame)`` on the frame, back on an image of ``size``.

    The padding of a letterboxed image is cut off, then the maps are
    resized bilinearly to ``size``.
    """
    size = tuple(size)
    if size == tuple(frame):
        return maps
    top, left, height, width = placement(size, frame, keep_aspect)
    maps = maps[:, None, top : top + height, left : left + width]
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]


def restore_one(anomaly_map, size, frame, keep_aspect):
    """:func:`restore` of one ``(H_frame, W_frame)`` map, as a numpy array."""
    return restore(torch.as_tensor(anomaly_map)[None], size, frame, keep_aspect)[0].numpy()
