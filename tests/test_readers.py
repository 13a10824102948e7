"""skcflow.readers: TIFF and PNG at the precision they were written with."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from skcflow.readers import UnusableFileError, read_image, read_mask

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
MONO12 = RNG.integers(0, 4096, (20, 30), dtype=np.uint16)


@pytest.mark.parametrize("array", [GREY8, RGB8, GREY16, RGB16, MONO12],
                         ids=["grey8", "rgb8", "grey16", "rgb16", "mono12"])
@pytest.mark.parametrize("compression", [None, "zlib", "lzw", "packbits"])
def test_tiff_reads_bit_exact(tmp_path, array, compression):
    path = tmp_path / "image.tif"
    photometric = "rgb" if array.ndim == 3 else "minisblack"
    tifffile.imwrite(path, array, photometric=photometric, compression=compression)
    image = read_image(path)
    assert image.dtype == array.dtype
    np.testing.assert_array_equal(image, array)


def test_tiff_variants_cameras_and_archives_write(tmp_path):
    # Planar RGB (one plane per channel), as some line-scan software writes.
    tifffile.imwrite(tmp_path / "planar.tiff", np.moveaxis(RGB16, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tiff"), RGB16)
    # White-is-zero grey is inverted to the usual convention.
    tifffile.imwrite(tmp_path / "white.tif", GREY16, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "white.tif"), 65535 - GREY16)
    # Alpha is dropped.
    rgba = np.concatenate([RGB8, np.full((20, 30, 1), 7, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.tif"), RGB8)
    # A reduced-resolution page (thumbnail) beside the image is not a second image.
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(GREY16)
        tif.write(GREY16[::4, ::4], subfiletype=1)
    np.testing.assert_array_equal(read_image(tmp_path / "thumb.tif"), GREY16)
    # Pillow's LZW and JPEG TIFFs decode through tifffile's codecs.
    Image.fromarray(RGB8).save(tmp_path / "pil_lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "pil_lzw.tif"), RGB8)
    smooth = np.repeat(np.linspace(0, 255, 30, dtype=np.uint8)[None], 20, 0)
    Image.fromarray(np.stack([smooth] * 3, -1)).save(tmp_path / "jpeg.tif", compression="jpeg",
                                                      quality=95)
    decoded = read_image(tmp_path / "jpeg.tif")
    assert decoded.shape == (20, 30, 3)
    assert np.abs(decoded.astype(int) - smooth[..., None]).max() <= 8


def test_bad_tiffs_are_clear_errors(tmp_path):
    cases = {}
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([GREY8, GREY8, GREY8]), photometric="minisblack")
    cases["stack.tif"] = "holds 3 images"
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        tif.write(GREY8)
        tif.write(GREY8)
    cases["pages.tif"] = "holds 2 images"
    tifffile.imwrite(tmp_path / "float.tif", GREY8.astype(np.float32))
    cases["float.tif"] = "float32"
    tifffile.imwrite(tmp_path / "signed.tif", GREY16.astype(np.int16))
    cases["signed.tif"] = "int16"
    tifffile.imwrite(tmp_path / "palette.tif", GREY8, photometric="palette",
                     colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)))
    cases["palette.tif"] = "PALETTE"
    (tmp_path / "text.tif").write_text("not a tiff")
    cases["text.tif"] = "Cannot read image"
    tifffile.imwrite(tmp_path / "full.tif", RGB16)
    (tmp_path / "cut.tif").write_bytes((tmp_path / "full.tif").read_bytes()[:2000])
    cases["cut.tif"] = "Cannot read image"
    for name, message in cases.items():
        with pytest.raises(UnusableFileError, match=message) as error:
            read_image(tmp_path / name)
        assert name in str(error.value)


def test_deep_png_keeps_every_bit(tmp_path):
    import imagecodecs

    # Pillow would cut 16-bit colour PNGs to 8 bits; they go to imagecodecs.
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(RGB16))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png"), RGB16)
    rgba16 = np.concatenate([RGB16, np.full((20, 30, 1), 65535, np.uint16)], -1)
    (tmp_path / "rgba16.png").write_bytes(imagecodecs.png_encode(rgba16))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba16.png"), RGB16)
    # Mono12 exported as a 16-bit grey PNG: values 0..4095, kept as they are.
    Image.fromarray(MONO12).save(tmp_path / "mono12.png")
    image = read_image(tmp_path / "mono12.png")
    assert image.dtype == np.uint16 and image.max() <= 4095
    np.testing.assert_array_equal(image, MONO12)
    Image.fromarray(RGB8).save(tmp_path / "rgb8.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb8.png"), RGB8)


def test_masks_of_any_format(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:9, 3:12] = 255
    tifffile.imwrite(tmp_path / "m.tif", mask.astype(np.uint16) * 257)
    Image.fromarray(np.stack([np.zeros_like(mask), np.zeros_like(mask), mask], -1)).save(
        tmp_path / "m.png")
    for name in ("m.tif", "m.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), mask > 0)


def test_paths_that_are_not_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UnusableFileError, match=r"notes\.txt is not an image file.*\.tiff"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(UnusableFileError, match="not a regular file"):
        read_image(tmp_path / "folder.tif")
