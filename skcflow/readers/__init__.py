"""Image files read at the precision they were written with.

One reader per family of formats, each a library made for it: Pillow for
PNG, JPEG and BMP (with imagecodecs for colour PNGs of 16 bits per channel,
which Pillow cuts to 8), and tifffile for TIFF, the format of machine-vision
cameras and inspection archives (its compressions decoded by imagecodecs).

Every reader returns what the file holds without reducing it to 8 bits: a
``uint8`` or ``uint16`` array of shape ``(H, W)`` for grey images or
``(H, W, 3)`` for colour ones, alpha dropped. A file that is not such an
image is an :class:`UnusableFileError` naming it.
"""

from ._errors import UnusableFileError
from ._files import (is_paths, list_files, read_images, read_into_frame, stack_images,
                     visible_entries)
from ._formats import EXTENSIONS, read_image, read_mask

__all__ = ["EXTENSIONS", "UnusableFileError", "is_paths", "list_files", "read_image", "read_images",
           "read_into_frame", "read_mask", "stack_images", "visible_entries"]
