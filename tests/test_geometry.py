"""Frames, letterboxes and maps at each image's own size."""

import numpy as np
import pytest
import torch
from PIL import Image

from skcflow import FeatureExtractor, PaDiM, load_images, make_pipeline
from skcflow.features import to_frame
from skcflow.geometry import (blur_matrix, frame_shape, into_frame, placement, resize_matrix,
                              restore)
from skcflow.metrics import pixel_auroc

from conftest import FAST_DETECTORS


def test_frame_shape_takes_an_int_or_a_pair():
    assert frame_shape(256) == (256, 256)
    assert frame_shape((256, 640)) == (256, 640) and frame_shape([64, 32]) == (64, 32)
    for bad in (0, -3, (256,), (256, 0), (1.5, 2), "256", True, (True, 4), None):
        with pytest.raises(ValueError, match="image_size"):
            frame_shape(bad)


def test_placement_stretches_or_letterboxes():
    assert placement((500, 1250), (256, 256), keep_aspect=False) == (0, 0, 256, 256)
    # Same aspect: the image fills the frame either way.
    assert placement((500, 1250), (256, 640), keep_aspect=True) == (0, 0, 256, 640)
    assert placement((500, 1250), (256, 256), keep_aspect=True) == (77, 0, 102, 256)
    assert placement((480, 360), (256, 256), keep_aspect=True) == (0, 32, 256, 192)


def test_letterbox_then_restore_gives_the_map_back():
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 60), torch.linspace(0, 1, 150), indexing="ij")
    smooth = (torch.sin(3 * rows) + torch.cos(2 * cols))[None].double()
    for keep_aspect in (False, True):
        framed = to_frame(smooth[:, None], (64, 64), keep_aspect)[:, 0].numpy()
        assert framed.shape == (1, 64, 64)
        back = restore(framed, (60, 150), (64, 64), keep_aspect)
        assert back.shape == (1, 60, 150)
        # Within 3% of the map's range of 2.6 (edges lose most to the
        # shrinking by up to 2.3 times).
        assert float(np.abs(back - smooth.numpy()).max()) < 0.03 * 2.6
    # The padding never reaches the restored map.
    frame = np.full((1, 64, 64), 100.0)
    top, left, height, width = placement((60, 150), (64, 64), True)
    frame[:, top : top + height, left : left + width] = 1.0
    assert restore(frame, (60, 150), (64, 64), True).max() == 1.0


def test_resize_and_blur_matrices_match_torch():
    import torch.nn.functional as F

    maps = torch.randn(3, 1, 13, 21, dtype=torch.float64)
    for size in [(40, 64), (7, 9), (13, 21), (26, 5)]:
        expected = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
        rows, cols = resize_matrix(13, size[0]), resize_matrix(21, size[1])
        np.testing.assert_allclose(rows @ maps[:, 0].numpy() @ cols.T, expected.numpy(), atol=1e-12)
    for sigma in (1.0, 4.0, 30.0):
        radius = min(int(4 * sigma + 0.5), 20)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, 1, -1)
        expected = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), kernel)[:, 0]
        np.testing.assert_allclose(maps[:, 0].numpy() @ blur_matrix(21, sigma).T, expected.numpy(),
                                   atol=1e-12)
    assert np.allclose(blur_matrix(21, 4.0).sum(1), 1) and np.allclose(resize_matrix(5, 17).sum(1), 1)


def test_the_loader_and_the_extractor_letterbox_alike():
    image = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    loaded = into_frame(image, (64, 64), keep_aspect=True)
    framed = to_frame(torch.from_numpy(image).permute(2, 0, 1)[None].float(), (64, 64), True)
    top, _, height, _ = placement((40, 64), (64, 64), True)
    assert (loaded[:top] == 0).all() and (loaded[top + height :] == 0).all()
    np.testing.assert_array_equal(loaded[top : top + height], image)
    np.testing.assert_array_equal(framed[0].permute(1, 2, 0).numpy(), loaded)


def _enlarge(images, masks, size):
    """Images resized bilinearly and masks by nearest neighbour to ``size``."""
    big = np.stack([np.asarray(Image.fromarray(i).resize(size[::-1], Image.BILINEAR)) for i in images])
    big_masks = np.stack([np.asarray(Image.fromarray(m).resize(size[::-1], Image.NEAREST)) for m in masks])
    return big, big_masks


@pytest.mark.parametrize("size", [(96, 96), (48, 80), (128, 72)])
def test_maps_come_back_at_the_size_of_the_images_given(fitted_pipeline, synthetic, size):
    test = synthetic.test
    maps_64 = fitted_pipeline.anomaly_map(test.images)
    big, big_masks = _enlarge(test.images, test.masks, size)
    maps = fitted_pipeline.anomaly_map(big)
    assert maps.shape == (len(big), *size) and maps.dtype == np.float32
    assert fitted_pipeline.predict_mask(big).shape == (len(big), *size)
    # They overlay the images given: the defects are found where their
    # enlarged masks are, as well as at the fitted size.
    at_64 = pixel_auroc(test.masks, maps_64)
    assert pixel_auroc(big_masks, maps) > at_64 - 0.03
    # Image scores come from the frame, whatever size the images come at.
    frame_scores = fitted_pipeline.score_samples(
        np.stack([np.asarray(Image.fromarray(b).resize((64, 64), Image.BILINEAR)) for b in big]))
    assert np.corrcoef(fitted_pipeline.score_samples(big), frame_scores)[0, 1] > 0.98


@pytest.mark.parametrize("name", sorted(FAST_DETECTORS))
def test_letterboxed_pipeline_cuts_maps_back_to_each_image(synthetic, name):
    images = synthetic.train.images[:, 8:56]  # 48 x 64 crops
    pipe = make_pipeline(FeatureExtractor(image_size=64, keep_aspect=True, device="cpu"),
                         FAST_DETECTORS[name]()).fit(images)
    test = synthetic.test.images[:, 8:56]
    maps = pipe.anomaly_map(test)
    assert maps.shape == test.shape[:3]
    # The same images letterboxed beforehand (as the loaders do) give the
    # frame's maps, whose content rows are exactly the maps above.
    framed = np.stack([into_frame(image, (64, 64), True) for image in test])
    top, _, height, _ = placement((48, 64), (64, 64), True)
    np.testing.assert_allclose(pipe.anomaly_map(framed)[:, top : top + height], maps,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pipe.score_samples(framed), pipe.score_samples(test),
                               rtol=1e-5, atol=1e-5)


def test_non_square_frames_keep_long_parts_undistorted(tmp_path):
    # A 1:2.5 strip (as a 500 x 1250 metal-surface image) in a frame of its
    # own aspect: features and maps keep its geometry.
    rng = np.random.default_rng(0)
    strips = rng.integers(90, 110, (6, 50, 125, 3), dtype=np.uint8)
    for i, strip in enumerate(strips):
        Image.fromarray(strip).save(tmp_path / f"{i}.png")
    data = load_images(tmp_path, image_size=(64, 160))
    assert data.images.shape == (6, 64, 160, 3) and data.sizes == [(50, 125)] * 6
    pipe = make_pipeline(FeatureExtractor(image_size=(64, 160), device="cpu"),
                         PaDiM(n_features=40, device="cpu", random_state=0)).fit(data.images)
    assert pipe[-1].feature_shapes_[0] == (24, 16, 40)
    defective = strips[:2].copy()
    defective[:, 20:30, 100:110] = 255
    maps = pipe.anomaly_map(defective)
    assert maps.shape == (2, 50, 125)
    rows, cols = np.unravel_index(maps.reshape(2, -1).argmax(1), (50, 125))
    assert ((15 <= rows) & (rows <= 35) & (95 <= cols) & (cols <= 115)).all()
