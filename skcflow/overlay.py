"""Heat maps over images, as RGB pictures, with numpy alone.

Shared by the reports, ``skcflow score`` and the torch-free ONNX runtime.
"""

import numpy as np

# matplotlib's "jet": (position, value) breakpoints of each channel.
_JET = (
    ((0, 0.35, 0.66, 0.89, 1), (0, 0, 1, 1, 0.5)),
    ((0, 0.125, 0.375, 0.64, 0.91, 1), (0, 0, 1, 1, 0, 0)),
    ((0, 0.11, 0.34, 0.65, 1), (0.5, 1, 1, 0, 0)),
)


def to_display(image, bit_depth):
    """An image of ``bit_depth`` bits per sample as RGB uint8, for pictures.

    Grey ``(H, W)`` images are repeated over three channels.
    """
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype == np.uint8:
        return image
    scaled = image.astype(np.float64) * (255 / (2**bit_depth - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def overlay(image, anomaly_map, vmin, vmax):
    """An RGB uint8 picture: the uint8 image with the map as a translucent jet heat map."""
    level = np.clip((anomaly_map - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    heat = np.stack([np.interp(level, x, y) for x, y in _JET], axis=-1)
    blended = 0.55 * image.astype(np.float32) / 255 + 0.45 * heat
    return (np.clip(blended, 0, 1) * 255).astype(np.uint8)
