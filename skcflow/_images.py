"""The raw images skcflow takes: their shape, dtype and bit depth.

Shared by the :class:`~skcflow.FeatureExtractor` and the torch-free ONNX
runtime (:mod:`skcflow.runtime`), so that both accept and refuse exactly
the same images. Needs numpy only.
"""

import numpy as np

BIT_DEPTHS = (8, 10, 12, 14, 16)


def check_images(X):
    """Validate raw images and return them as an ``(N, H, W, 3)`` array.

    Accepts a uint8 or uint16 array, a float array in ``[0, 1]``, or a
    scikit-learn ``Bunch`` with an ``images`` field. Conversion to float
    happens batch by batch later, so that a large integer set never exists
    in float at once.
    """
    if hasattr(X, "images") and not isinstance(X, np.ndarray):
        X = X.images
    if hasattr(X, "detach"):  # a torch tensor, without importing torch
        X = X.detach().cpu().numpy()
    if isinstance(X, (list, tuple)):
        shapes = [np.shape(image) for image in X]
        if len(set(shapes)) > 1:
            first = shapes[0]
            odd = next(i for i, shape in enumerate(shapes) if shape != first)
            raise ValueError(
                f"images in a list must share one shape; image 0 is {first} but image {odd} "
                f"is {shapes[odd]}. Resize them first, or pass their files to "
                "skcflow.load_images(..., image_size=...)."
            )
    X = np.asarray(X)
    if X.size == 0:
        raise ValueError("no images were given (empty input).")
    if X.ndim != 4 or X.shape[-1] != 3:
        hint = ""
        if X.ndim == 4 and X.shape[1] == 3:
            hint = " It looks channels-first (N x 3 x H x W): use X.transpose(0, 2, 3, 1)."
        elif X.ndim == 3 and X.shape[-1] == 3:
            hint = " It looks like a single image: use X[None]."
        elif X.ndim == 3:
            hint = " For grayscale images stack them to RGB: np.repeat(X[..., None], 3, axis=-1)."
        raise ValueError(
            f"images must be an array of shape (n_images, height, width, 3); got shape {X.shape}.{hint}"
        )
    if X.dtype in (np.uint8, np.uint16):
        return X
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(
            f"images must be uint8, uint16 or float in [0, 1]; got dtype {X.dtype}. Convert "
            "integer camera data to uint16 (with the extractor's bit_depth set to its depth)."
        )
    if not np.isfinite(X).all():
        raise ValueError("images contain NaN or infinite values.")
    if X.min() < 0 or X.max() > 1:
        raise ValueError(
            f"float images must lie in [0, 1]; got values in [{X.min():.3g}, {X.max():.3g}]. "
            "Divide uint8 data by 255, or pass it as uint8."
        )
    return X


def check_bit_depth(X, bit_depth):
    """Refuse integer images that a model fitted at ``bit_depth`` cannot scale alike.

    Integer images must have the dtype the bit depth implies (``uint8`` for
    8 bits, ``uint16`` above) and values within its range; float images in
    ``[0, 1]`` are already scaled.
    """
    if np.issubdtype(X.dtype, np.floating):
        return
    expected = np.uint8 if bit_depth == 8 else np.uint16
    if X.dtype != expected:
        raise ValueError(
            f"the extractor was fitted on {bit_depth}-bit images "
            f"({np.dtype(expected).name}), so it cannot scale {X.dtype} images the same "
            f"way; pass {np.dtype(expected).name} images, or fit it on {X.dtype} images."
        )
    limit = 2**bit_depth - 1
    if X.dtype == np.uint16 and bit_depth < 16 and (peak := int(X.max())) > limit:
        raise ValueError(
            f"image values reach {peak}, beyond the {limit} of the {bit_depth}-bit "
            "images the extractor was fitted on (bit_depth_); pass images of that camera "
            "setting, or fit with a larger bit_depth."
        )
