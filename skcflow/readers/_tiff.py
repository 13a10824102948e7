"""TIFF through tifffile, the reader of scientific and machine-vision TIFF."""

import numpy as np

from ._errors import UnusableFileError


def read_tiff(path):
    """``(H, W)`` or ``(H, W, C)`` array of a single-image TIFF file.

    A file of several full-resolution pages (a stack, a burst, a
    multi-exposure) is refused rather than cut to its first page: which page
    is the image to inspect is the user's choice. Reduced-resolution pages
    (thumbnails, pyramid levels) are not counted.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pages = [page for page in tif.pages if not page.is_reduced]
            if len(pages) != 1:
                raise UnusableFileError(
                    f"{path} holds {len(pages)} images (TIFF pages); skcflow reads one image "
                    "per file: save the page to inspect as a file of its own."
                )
            page = pages[0]
            image = page.asarray()
            axes, photometric = page.axes, page.photometric
    except UnusableFileError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, codec errors...
        raise UnusableFileError(f"Cannot read image {path}: {exc}") from exc
    if "S" in axes and axes.index("S") == 0 and image.ndim == 3:
        image = np.moveaxis(image, 0, -1)  # planar configuration: one plane per channel
    name = photometric.name
    if name == "MINISWHITE":
        image = np.iinfo(image.dtype).max - image if image.dtype.kind == "u" else ~image
    elif name not in ("MINISBLACK", "RGB", "YCBCR"):
        raise UnusableFileError(
            f"{path} is a {name} TIFF; skcflow reads grey and RGB TIFF images: convert it."
        )
    return image
