"""Tests for skcflow.datasets: real MVTec-layout data, error paths, synthetic data."""

import re
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from scipy import ndimage

from skcflow.datasets import load_images, load_mvtec, make_defects
from skcflow.geometry import placement

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MVTEC = DATA / "mvtec_ad"
MTD = DATA / "mtd"


def _require(folder):
    if not folder.is_dir():
        pytest.skip(
            f"real data not found at {folder}; these tests read it from "
            "../shared/data relative to the project root"
        )


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def bottle_test():
    _require(MVTEC / "bottle")
    return load_mvtec(MVTEC, "bottle", "test", image_size=64)


@pytest.fixture(scope="module")
def tile_test():
    _require(MTD / "magnetic_tile")
    with pytest.warns(UserWarning, match="2 non-empty mask") as record:
        data = load_mvtec(str(MTD), "magnetic_tile", split="test", image_size=64)
    return data, str(record[0].message)


def test_bottle_train_counts_and_format():
    _require(MVTEC / "bottle")
    data = load_mvtec(MVTEC, "bottle", image_size=32)
    assert data.images.shape == (209, 32, 32, 3)
    assert data.images.dtype == np.uint8
    assert data.masks.shape == (209, 32, 32) and data.masks.dtype == np.uint8
    assert not data.masks.any()
    assert data.target.tolist() == [0] * 209
    assert set(data.defect_type) == {"good"}
    assert data.filenames[0] == str(MVTEC / "bottle" / "train" / "good" / "000.png")
    assert data.filenames == sorted(data.filenames)
    assert "209 images (0 anomalous)" in data.DESCR


def test_bottle_test_counts_masks_and_order(bottle_test):
    data = bottle_test
    assert data.images.shape == (83, 64, 64, 3)
    assert data.masks.shape == (83, 64, 64)
    assert Counter(data.defect_type) == {
        "broken_large": 20, "broken_small": 22, "contamination": 21, "good": 20,
    }
    # Sorted by defect folder, then file name.
    keys = [(Path(f).parent.name, Path(f).name) for f in data.filenames]
    assert keys == sorted(keys)
    assert [k[0] for k in keys] == data.defect_type
    assert data.target.tolist() == [int(d != "good") for d in data.defect_type]
    assert int(data.target.sum()) == 63
    assert set(np.unique(data.masks)) == {0, 1}
    anomalous = data.masks[data.target == 1]
    assert (anomalous.sum(axis=(1, 2)) > 0).all()
    assert not data.masks[data.target == 0].any()


def test_bottle_pixels_and_mask_alignment(bottle_test):
    index = bottle_test.defect_type.index("broken_small")
    path = Path(bottle_test.filenames[index])
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB").resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(bottle_test.images[index], expected)
    mask_file = MVTEC / "bottle" / "ground_truth" / "broken_small" / (
        f"{path.stem}_mask.png"
    )
    with Image.open(mask_file) as mask:
        expected_mask = np.asarray(mask.resize((64, 64), Image.NEAREST)) > 0
    np.testing.assert_array_equal(bottle_test.masks[index], expected_mask)
    # Full-size load of that one image is byte-for-byte the file.
    with Image.open(path) as image:
        original = np.asarray(image.convert("RGB"))
    full_size = load_images(path, image_size=None).images[0]
    np.testing.assert_array_equal(full_size, original)


def test_magnetic_tile_train_is_grayscale_as_rgb():
    _require(MTD / "magnetic_tile")
    data = load_mvtec(MTD, "magnetic_tile", "train", image_size=32)
    assert data.images.shape == (761, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.target.sum() == 0 and not data.masks.any()
    np.testing.assert_array_equal(data.images[..., 0], data.images[..., 2])
    assert data.images.std() > 5  # real content, not a constant fill


def test_magnetic_tile_test_counts_and_empty_masks(tile_test):
    data, message = tile_test
    assert data.images.shape == (583, 64, 64, 3)
    assert Counter(data.defect_type) == {
        "good": 191, "blowhole": 115, "break": 85, "crack": 57, "fray": 32,
        "uneven": 103,
    }
    assert int((data.target == 0).sum()) == 191
    assert int(data.target.sum()) == 392
    assert set(np.unique(data.masks)) == {0, 1}
    assert not data.masks[data.target == 0].any()
    empty = {
        f"{d}/{Path(f).stem}"
        for f, d, m, t in zip(data.filenames, data.defect_type, data.masks, data.target)
        if t == 1 and not m.any()
    }
    # 4 masks are empty in the files; 042 and 059 lose their thin defect at
    # 64 px, which the warning reports; empty or not, target stays 1.
    assert empty == {f"uneven/{n}" for n in ("042", "050", "053", "059", "066", "067")}
    assert "uneven/042_mask.png" in message and "uneven/059_mask.png" in message
    assert "050_mask" not in message


# ------------------------------------------------------ tiny MVTec-layout trees


def _save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **kwargs)


def _solid(value, size=(24, 24)):
    return np.full(size + (3,), value, dtype=np.uint8)


def _make_tree(root, size=(24, 24)):
    """root/cat with train/good (2), test/good (1), test/scratch (2) + masks."""
    cat = root / "cat"
    _save(cat / "train" / "good" / "b.png", _solid(20, size))
    _save(cat / "train" / "good" / "a.png", _solid(10, size))
    _save(cat / "test" / "good" / "000.png", _solid(30, size))
    for name, value in (("001", 200), ("000", 100)):
        _save(cat / "test" / "scratch" / f"{name}.png", _solid(value, size))
        mask = np.zeros(size, dtype=np.uint8)
        mask[: size[0] // 2, : size[1] // 4] = 255
        _save(cat / "ground_truth" / "scratch" / f"{name}_mask.png", mask)
    return cat


def test_tree_loads_with_sorting_and_resizing(tmp_path):
    _make_tree(tmp_path)
    train = load_mvtec(tmp_path, "cat", "train", image_size=8)
    assert [Path(f).name for f in train.filenames] == ["a.png", "b.png"]
    assert train.images[:, 0, 0, 0].tolist() == [10, 20]
    test = load_mvtec(tmp_path, "cat", "test", image_size=8)
    assert test.defect_type == ["good", "scratch", "scratch"]
    assert [Path(f).name for f in test.filenames] == ["000.png", "000.png", "001.png"]
    assert test.images[:, 4, 4, 1].tolist() == [30, 100, 200]
    assert test.target.tolist() == [0, 1, 1]
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[:4, :2] = 1
    np.testing.assert_array_equal(test.masks[1], expected)
    assert not test.masks[0].any()


def test_image_size_none_keeps_size_and_rejects_mixed(tmp_path):
    cat = _make_tree(tmp_path, size=(20, 30))
    data = load_mvtec(tmp_path, "cat", "test", image_size=None)
    assert data.images.shape == (3, 20, 30, 3) and data.masks.shape == (3, 20, 30)
    _save(cat / "train" / "good" / "c.png", _solid(5, (20, 20)))
    with pytest.raises(ValueError, match="image_size=<int>"):
        load_mvtec(tmp_path, "cat", "train", image_size=None)
    resized = load_mvtec(tmp_path, "cat", "train", image_size=16)
    assert resized.images.shape == (3, 16, 16, 3)


@pytest.mark.parametrize("missing", ["root", "category", "split"])
def test_missing_folder_is_named(tmp_path, missing):
    _make_tree(tmp_path)
    root, category = tmp_path, "cat"
    if missing == "root":
        root = tmp_path / "nowhere"
        expected = root
    elif missing == "category":
        category = "dog"
        expected = tmp_path / "dog"
    else:
        (tmp_path / "cat" / "test").rename(tmp_path / "cat" / "elsewhere")
        expected = tmp_path / "cat" / "test"
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        load_mvtec(root, category, "test")


def test_bad_split_and_image_size(tmp_path):
    _make_tree(tmp_path)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_mvtec(tmp_path, "cat", "val")
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(ValueError, match="image_size"):
            load_mvtec(tmp_path, "cat", "train", image_size=bad)


def test_defective_image_without_mask(tmp_path):
    cat = _make_tree(tmp_path)
    mask = cat / "ground_truth" / "scratch" / "001_mask.png"
    mask.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(mask))) as info:
        load_mvtec(tmp_path, "cat", "test")
    assert str(cat / "test" / "scratch" / "001.png") in str(info.value)
    assert load_mvtec(tmp_path, "cat", "train", image_size=8).images.shape[0] == 2


def test_mask_size_mismatch(tmp_path):
    cat = _make_tree(tmp_path)
    mask = cat / "ground_truth" / "scratch" / "000_mask.png"
    _save(mask, np.zeros((24, 25)))
    with pytest.raises(ValueError, match=re.escape(str(mask)) + ".*24x25.*24x24"):
        load_mvtec(tmp_path, "cat", "test")


def test_truncated_image_is_named(tmp_path):
    cat = _make_tree(tmp_path)
    path = cat / "train" / "good" / "b.png"
    noisy = np.random.RandomState(0).randint(0, 256, size=(24, 24, 3))
    _save(path, noisy)
    path.write_bytes(path.read_bytes()[:-300])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ValueError, match=re.escape(f"Cannot read image {path}")):
        load_mvtec(tmp_path, "cat", "train")


def test_non_image_files(tmp_path):
    cat = _make_tree(tmp_path)
    # Hidden files are not data.
    (cat / "train" / "good" / ".DS_Store").write_bytes(b"\x00\x01")
    assert len(load_mvtec(tmp_path, "cat", "train", image_size=8).filenames) == 2
    notes = cat / "train" / "good" / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ValueError, match=re.escape(f"{notes} is not an image file")):
        load_mvtec(tmp_path, "cat", "train")
    notes.unlink()
    stray = cat / "test" / "README"
    stray.write_text("hello")
    with pytest.raises(ValueError, match=re.escape(str(stray))):
        load_mvtec(tmp_path, "cat", "test")


def test_unused_mask_warns(tmp_path):
    cat = _make_tree(tmp_path)
    orphan = cat / "ground_truth" / "scratch" / "007_mask.png"
    _save(orphan, np.zeros((24, 24)))
    with pytest.warns(UserWarning, match=re.escape(str(orphan))):
        data = load_mvtec(tmp_path, "cat", "test", image_size=8)
    assert len(data.filenames) == 3


def test_empty_mask_file_loads_and_shrunk_mask_warns(tmp_path):
    cat = _make_tree(tmp_path, size=(64, 64))
    _save(cat / "ground_truth" / "scratch" / "000_mask.png", np.zeros((64, 64)))
    thin = np.zeros((64, 64))
    thin[:, 1] = 255  # a one-pixel line that nearest-neighbour shrinking misses
    _save(cat / "ground_truth" / "scratch" / "001_mask.png", thin)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = load_mvtec(tmp_path, "cat", "test", image_size=64)
    assert full.target.tolist() == [0, 1, 1]
    assert full.masks.sum(axis=(1, 2)).tolist() == [0, 0, 64]
    with pytest.warns(UserWarning, match=r"1 non-empty mask.*001_mask\.png"):
        small = load_mvtec(tmp_path, "cat", "test", image_size=8)
    assert small.target.tolist() == [0, 1, 1] and not small.masks.any()


def test_sixteen_bit_grayscale_keeps_every_bit(tmp_path):
    path = tmp_path / "deep.png"
    values = [0, 1, 4095, 32896, 65535]
    Image.fromarray(np.array([values], dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    images = load_images(path, image_size=None).images
    assert images.dtype == np.uint16 and images.shape == (1, 1, 5, 3)
    assert images[0, 0, :, 0].tolist() == values and (images[..., 0] == images[..., 2]).all()


# ---------------------------------------------------------------- load_images


def test_load_images_modes_and_formats_become_rgb(tmp_path):
    _save(tmp_path / "a_gray.png", np.full((10, 10), 77))
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[...] = (10, 20, 30, 0)  # fully transparent: alpha is dropped
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b_rgba.png")
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "c_palette.png")
    Image.new("1", (10, 10), 1).save(tmp_path / "d_bilevel.bmp")
    _save(tmp_path / "e.BMP", _solid((40, 50, 60), (10, 10)))
    _save(tmp_path / "f.jpg", _solid((90, 120, 150), (10, 10)), quality=95)
    _save(tmp_path / "g.JPEG", np.full((10, 10), 180), quality=95)
    data = load_images(tmp_path, image_size=None)
    assert data.images.shape == (7, 10, 10, 3) and data.images.dtype == np.uint8
    assert [Path(f).name for f in data.filenames] == [
        "a_gray.png", "b_rgba.png", "c_palette.png", "d_bilevel.bmp", "e.BMP",
        "f.jpg", "g.JPEG",
    ]
    centre = data.images[:, 5, 5].astype(int)
    assert centre[:5].tolist() == [
        [77, 77, 77], [10, 20, 30], [200, 100, 50], [255, 255, 255], [40, 50, 60],
    ]
    np.testing.assert_allclose(centre[5], [90, 120, 150], atol=3)
    np.testing.assert_allclose(centre[6], [180, 180, 180], atol=3)
    assert data.skipped == []


def test_load_images_single_path_and_list_order(tmp_path):
    _save(tmp_path / "x.png", _solid(1))
    _save(tmp_path / "y.png", _solid(2))
    single = load_images(str(tmp_path / "x.png"), image_size=12)
    assert single.images.shape == (1, 12, 12, 3)
    assert single.filenames == [str(tmp_path / "x.png")]
    listed = load_images([tmp_path / "y.png", str(tmp_path / "x.png")], image_size=12)
    assert listed.images[:, 0, 0, 0].tolist() == [2, 1]
    assert listed.filenames == [str(tmp_path / "y.png"), str(tmp_path / "x.png")]


def test_load_images_resize_is_antialiased(tmp_path):
    checker = (np.indices((64, 64)).sum(axis=0) % 2) * 255
    _save(tmp_path / "checker.png", checker)
    small = load_images(tmp_path / "checker.png", image_size=16).images[0]
    # Sampling without antialiasing would keep pure black and white pixels.
    assert np.abs(small.astype(int) - 127.5).max() <= 2


def test_load_images_errors_raise(tmp_path):
    _save(tmp_path / "good.png", _solid(5))
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(str(notes))):
        load_images(tmp_path)
    notes.unlink()
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "sub"))):
        load_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_images([tmp_path / "good.png", tmp_path / "missing.png"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_images(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="errors must be"):
        load_images(tmp_path / "good.png", errors="ignore")
    with pytest.raises(ValueError, match="No image could be loaded"):
        load_images([])


def test_load_images_skip_warns_and_records(tmp_path):
    _save(tmp_path / "a.png", _solid(11))
    _save(tmp_path / "c.jpg", _solid(33))
    truncated = tmp_path / "b.png"
    _save(truncated, np.random.RandomState(1).randint(0, 256, size=(24, 24, 3)))
    truncated.write_bytes(truncated.read_bytes()[:100])
    garbage = tmp_path / "d.bmp"
    garbage.write_bytes(b"this is not a bitmap")
    notes = tmp_path / "e.txt"
    notes.write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(b"ignored, not even reported")

    with pytest.raises(ValueError, match=re.escape(f"Cannot read image {truncated}")):
        load_images(tmp_path)
    with pytest.warns(UserWarning) as record:
        data = load_images(tmp_path, image_size=8, errors="skip")
    assert [Path(f).name for f in data.filenames] == ["a.png", "c.jpg"]
    assert data.images.shape == (2, 8, 8, 3)
    assert data.images[0, 0, 0].tolist() == [11, 11, 11]
    skipped_paths = [path for path, _ in data.skipped]
    assert skipped_paths == [str(truncated), str(garbage), str(notes)]
    assert "truncated" in data.skipped[0][1]
    assert "not an image file" in data.skipped[2][1]
    messages = [str(w.message) for w in record]
    assert len(messages) == 3
    for path in (truncated, garbage, notes):
        assert any(str(path) in m for m in messages)


def test_load_images_skip_everything_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.warns(UserWarning, match="a.txt"):
        with pytest.raises(ValueError, match="No image could be loaded.*a.txt"):
            load_images(tmp_path, errors="skip")


def test_load_images_mixed_sizes(tmp_path):
    _save(tmp_path / "a.png", _solid(1, (10, 10)))
    _save(tmp_path / "b.png", _solid(1, (10, 12)))
    with pytest.raises(ValueError, match=r"2 sizes.*10x12 .*b\.png.*image_size=<int>"):
        load_images(tmp_path, image_size=None)
    assert load_images(tmp_path, image_size=6).images.shape == (2, 6, 6, 3)


# ---------------------------------------------------------------- make_defects


@pytest.fixture(scope="module")
def synthetic():
    start = time.perf_counter()
    data = make_defects(random_state=0)
    return data, time.perf_counter() - start


def test_make_defects_format_and_speed(synthetic):
    data, seconds = synthetic
    assert seconds < 2.0
    train, test = data.train, data.test
    assert train.images.shape == (60, 128, 128, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (40, 128, 128, 3) and test.images.dtype == np.uint8
    assert train.masks.shape == (60, 128, 128) and test.masks.dtype == np.uint8
    assert train.target.tolist() == [0] * 60 and not train.masks.any()
    assert set(np.unique(test.masks)) == {0, 1}
    assert test.target.tolist() == [int(d != "good") for d in test.defect_type]
    assert Counter(test.defect_type) == {
        "good": 20, "scratch": 5, "spot": 5, "crack": 5, "blob": 5,
    }
    assert test.filenames[7] == f"synthetic/test/{test.defect_type[7]}/007"
    assert train.filenames[0] == "synthetic/train/good/000"
    assert "synthetic" in data.DESCR.lower() and "not real" in test.DESCR


def test_make_defects_masks_match_targets(synthetic):
    test = synthetic[0].test
    area = test.masks.mean(axis=(1, 2))
    np.testing.assert_array_equal(area > 0, test.target == 1)
    assert area[test.target == 1].min() >= 0.003


def test_make_defects_is_deterministic():
    a = make_defects(n_train=5, n_test=6, image_size=48, random_state=3)
    b = make_defects(
        n_train=5, n_test=6, image_size=48, random_state=np.random.RandomState(3)
    )
    c = make_defects(n_train=5, n_test=6, image_size=48, random_state=4)
    for split in ("train", "test"):
        for key in ("images", "masks", "target"):
            np.testing.assert_array_equal(a[split][key], b[split][key])
        assert a[split].defect_type == b[split].defect_type
    assert not np.array_equal(a.train.images, c.train.images)
    assert not np.array_equal(a.test.masks, c.test.masks)


def test_make_defects_mask_is_exactly_the_changed_pixels():
    clean = make_defects(n_train=4, n_test=24, image_size=64, anomaly_ratio=0.0,
                         random_state=7)
    dirty = make_defects(n_train=4, n_test=24, image_size=64, anomaly_ratio=0.5,
                         random_state=7)
    assert clean.test.target.sum() == 0 and dirty.test.target.sum() == 12
    np.testing.assert_array_equal(clean.train.images, dirty.train.images)
    change = np.abs(dirty.test.images.astype(int) - clean.test.images).max(axis=-1)
    inside = dirty.test.masks.astype(bool)
    assert (change[~inside] == 0).all()
    assert change[inside].min() >= 63  # 0.25 on a 0-1 scale, after rounding


def test_make_defects_defects_stand_out_from_surroundings(synthetic):
    test = synthetic[0].test
    masks = test.masks.astype(bool)
    for image, mask, kind in zip(test.images, masks, test.defect_type):
        if kind == "good":
            continue
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
        gap = np.abs(image[mask].mean(axis=0) - image[ring].mean(axis=0)).max()
        assert gap > 40, kind


def test_make_defects_normal_images_vary_within_one_product(synthetic):
    images = synthetic[0].train.images.astype(float)
    means = images.mean(axis=(1, 2))
    # Brightness and tint vary a little from image to image...
    assert means.std(axis=0).min() > 1.0
    assert np.abs(means - means.mean(axis=0)).max() < 25
    # ...the texture is never repeated...
    differences = np.abs(images[1:] - images[:-1]).mean(axis=(1, 2, 3))
    assert differences.min() > 5
    # ...and every image is textured, not flat.
    assert images.std(axis=(1, 2)).min() > 8


@pytest.mark.parametrize("ratio, expected", [(0.0, 0), (0.26, 3), (1.0, 10)])
def test_make_defects_anomaly_ratio(ratio, expected):
    data = make_defects(n_train=2, n_test=10, image_size=32, anomaly_ratio=ratio,
                        random_state=1)
    assert int(data.test.target.sum()) == expected
    assert int((data.test.masks.sum(axis=(1, 2)) > 0).sum()) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 0}, {"n_test": 2.5}, {"image_size": 16}, {"image_size": True},
        {"anomaly_ratio": 1.5}, {"anomaly_ratio": -0.1}, {"anomaly_ratio": "half"},
    ],
)
def test_make_defects_rejects_bad_parameters(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        make_defects(**kwargs)


# ------------------------------------------- factory images: depth and geometry


def test_sixteen_bit_tiffs_and_png_load_as_uint16(tmp_path):
    import tifffile

    grey = np.full((30, 40), 3000, np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", grey)
    tifffile.imwrite(tmp_path / "b.TIFF", np.stack([grey, grey // 2, grey // 3], -1), photometric="rgb")
    Image.fromarray(grey + 1000).save(tmp_path / "c.png")
    data = load_images(tmp_path, image_size=(16, 24))
    assert data.images.dtype == np.uint16 and data.images.shape == (3, 16, 24, 3)
    # Resizing works in 16 bits: a flat image keeps its exact level.
    assert data.images[:, 8, 12].tolist() == [[3000] * 3, [3000, 1500, 1000], [4000] * 3]
    assert data.sizes == [(30, 40)] * 3
    assert load_images(tmp_path, image_size=None).images.shape == (3, 30, 40, 3)


def test_mixed_bit_depths_are_an_error_naming_files(tmp_path):
    _save(tmp_path / "eight.png", _solid(9))
    Image.fromarray(np.zeros((24, 24), np.uint16)).save(tmp_path / "sixteen.png")
    with pytest.raises(ValueError, match=r"2 bit depths.*8-bit .*eight\.png.*16-bit .*sixteen\.png"):
        load_images(tmp_path, image_size=8)


def test_masks_follow_non_square_sizes_exactly(tmp_path):
    cat = tmp_path / "cat"
    image = np.zeros((24, 36, 3), np.uint8)
    mask = np.zeros((24, 36), np.uint8)
    # A defect on a 2 x 2 grid, so that halving the image keeps it exact.
    image[4:10, 6:20] = 255
    mask[4:10, 6:20] = 255
    _save(cat / "test" / "dent" / "000.png", image)
    _save(cat / "ground_truth" / "dent" / "000_mask.png", mask)
    data = load_mvtec(tmp_path, "cat", "test", image_size=(12, 18))
    assert data.images.shape == (1, 12, 18, 3) and data.masks.shape == (1, 12, 18)
    np.testing.assert_array_equal(data.masks[0], data.images[0, ..., 0] > 127)
    boxed = load_mvtec(tmp_path, "cat", "test", image_size=24, keep_aspect=True)
    assert boxed.images.shape == (1, 24, 24, 3) and boxed.sizes == [(24, 36)]
    # Letterboxed alike: 16 rows of content between 4 rows of padding.
    assert not boxed.images[0, :4].any() and not boxed.images[0, 20:].any()
    np.testing.assert_array_equal(boxed.masks[0] > 0, boxed.images[0, ..., 0] > 127)


def test_test_sets_without_ground_truth_have_unknown_masks(tmp_path):
    import shutil

    cat = _make_tree(tmp_path)
    shutil.rmtree(cat / "ground_truth")
    test = load_mvtec(tmp_path, "cat", "test", image_size=8)
    assert test.masks is None and test.target.tolist() == [0, 1, 1]
    assert "without pixel masks" in test.DESCR
    train = load_mvtec(tmp_path, "cat", "train", image_size=8)
    assert train.masks.shape == (2, 8, 8) and not train.masks.any()


def test_magnetic_tiles_keep_their_many_sizes_and_aspects():
    _require(MTD / "magnetic_tile")
    data = load_mvtec(MTD, "magnetic_tile", "train", image_size=(48, 64), keep_aspect=True)
    assert data.images.shape == (761, 48, 64, 3)
    sizes = np.array(data.sizes)
    assert len(set(data.sizes)) > 100 and (sizes[:, 0] != sizes[:, 1]).mean() > 0.9
    portrait = int(np.argmax(sizes[:, 0] / sizes[:, 1]))
    # The tallest tile sits between zero columns, its aspect kept.
    _, left, height, width = placement(data.sizes[portrait], (48, 64), True)
    assert height == 48 and width < 24 and left > 20
    assert not data.images[portrait, :, : left - 1].any()
    assert data.images[portrait, :, left + 1 : left + width - 1].std() > 3
