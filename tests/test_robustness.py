"""Issue 8's catalogue: bad input gives a clear error, extreme input finite scores."""

import numpy as np
import torch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skcflow import FeatureExtractor
from skcflow._images import check_images

from conftest import FAST_DETECTORS

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float16, np.float32,
                          np.float64, np.bool_, np.complex64])
# Arbitrary shapes, and image-like ones (N x H x W x 3) so that both branches run.
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
    hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=5).map(lambda s: (*s, 3)),
)


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(DTYPES, SHAPES))
def test_check_images_accepts_exactly_valid_arrays_or_says_why(X):
    valid = (
        X.ndim == 4 and X.shape[-1] == 3 and X.size > 0
        and (X.dtype in (np.uint8, np.uint16)
             or (X.dtype.kind == "f" and np.isfinite(X).all() and X.min() >= 0 and X.max() <= 1))
    )
    if valid:
        out = check_images(X)
        assert out.shape == X.shape and out.dtype == X.dtype
        np.testing.assert_array_equal(out, X)
    else:
        with pytest.raises(ValueError, match="images"):
            check_images(X)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=2, max_size=5))
def test_lists_of_arrays_of_mixed_sizes_name_the_odd_one(sizes):
    images = [np.zeros((h, w, 3), np.uint8) for h, w in sizes]
    if len(set(sizes)) == 1:
        assert check_images(images).shape == (len(sizes), *sizes[0], 3)
    else:
        odd = next(i for i, size in enumerate(sizes) if size != sizes[0])
        with pytest.raises(ValueError, match=f"image {odd} is"):
            check_images(images)


@pytest.mark.parametrize("bad, message", [
    (np.full((2, 64, 64, 3), np.inf, np.float32), "infinite"),
    (np.full((2, 64, 64, 3), -0.5, np.float64), r"\[0, 1\]"),
    (np.full((2, 64, 64, 3), 300, np.int32), "dtype"),
    (np.zeros((2, 64, 64, 1), np.uint8), "shape"),
    (np.zeros((2, 3, 64, 64), np.float32), "channels-first"),
])
def test_more_bad_images(bad, message):
    with pytest.raises(ValueError, match=message):
        FeatureExtractor(image_size=64, device="cpu").fit().transform(bad)


def test_images_smaller_than_the_backbone_are_resized():
    # The extractor resizes every input to image_size, so a 4 x 4 image is
    # scored at the fitted resolution instead of failing inside the CNN.
    features = FeatureExtractor(image_size=64, device="cpu").fit().transform(
        np.zeros((1, 4, 4, 3), np.uint8))
    assert features.input_size == (4, 4)
    assert all(m.shape[-1] > 0 for m in features.maps)


EXTREMES = {
    "black": np.zeros((1, 64, 64, 3), np.uint8),
    "white": np.full((1, 64, 64, 3), 255, np.uint8),
    "noise": np.random.RandomState(0).randint(0, 256, (1, 64, 64, 3)).astype(np.uint8),
    "stripes": np.tile(np.array([0, 255], np.uint8), 32)[None, None, :, None].repeat(64, 1)
    .repeat(3, 3),
}


@pytest.mark.parametrize("name", sorted(EXTREMES))
def test_extreme_images_give_finite_scores_and_maps(fitted_pipeline, name):
    pipeline, images = fitted_pipeline, EXTREMES[name]
    assert np.isfinite(pipeline.score_samples(images)).all()
    assert np.isfinite(pipeline.decision_function(images)).all()
    maps = pipeline.anomaly_map(images)
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()
    assert set(np.unique(pipeline.predict(images))) <= {-1, 1}


@pytest.mark.parametrize("name", sorted(FAST_DETECTORS))
def test_detectors_on_empty_input_and_missing_cuda(name, train_features):
    make = FAST_DETECTORS[name]
    with pytest.raises(ValueError, match="empty input"):
        make(device="cpu").fit(train_features[:0])
    model = make(device="auto").fit(train_features[:4])
    with pytest.raises(ValueError, match="empty input"):
        model.score_samples(train_features[:0])
    if not torch.cuda.is_available():
        assert model.device_ == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            make(device="cuda").fit(train_features)


def test_features_of_another_extractor_are_refused():
    # mobilenet_v3_large's pyramid has the shapes of efficientnet_lite0's:
    # without identities, a detector would score it silently.
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    lite = FeatureExtractor(image_size=64, device="cpu").fit(images)
    mobile = FeatureExtractor(backbone="mobilenet_v3_large", weights=None, image_size=64,
                              device="cpu").fit(images)
    features, other = lite.transform(images), mobile.transform(images)
    assert features.shapes == other.shapes
    for name in sorted(FAST_DETECTORS):
        detector = FAST_DETECTORS[name]().fit(features)
        with pytest.raises(ValueError, match="another feature extractor.*backbone 'mobilenet_v3_large' "
                                             "instead of 'efficientnet_lite0'"):
            detector.score_samples(other)
        assert np.isfinite(detector.score_samples(features)).all()
    # Another bit depth is another extractor too.
    deep = FeatureExtractor(image_size=64, bit_depth=16, device="cpu").fit(images.astype(np.uint16) * 257)
    with pytest.raises(ValueError, match="bit_depth 16 instead of 8"):
        FAST_DETECTORS["padim"]().fit(features).anomaly_map(deep.transform(images.astype(np.uint16) * 257))


def test_submodules_are_reachable_after_import_skcflow():
    import subprocess
    import sys

    code = "import skcflow; skcflow.metrics.aupro; skcflow.model_selection.predefined_split"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.parametrize("name", sorted(FAST_DETECTORS))
def test_tiny_images_and_wide_smoothing_score(name):
    # 16 px images in the smallest frame, and a smoothing kernel wider than the map.
    from skcflow import make_pipeline

    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    kwargs = {} if name == "cflow" else {"sigma": 12.0}
    pipe = make_pipeline(FeatureExtractor(image_size=32, device="cpu"),
                         FAST_DETECTORS[name](**kwargs)).fit(images)
    maps = pipe.anomaly_map(images)
    assert maps.shape == (6, 16, 16) and np.isfinite(maps).all()


def test_image_sizes_out_of_range_are_clear_errors(capsys):
    from sklearn.utils._param_validation import InvalidParameterError

    from skcflow.cli import main

    for size in (100000, (64, 100000)):
        with pytest.raises((ValueError, InvalidParameterError), match="image_size"):
            FeatureExtractor(image_size=size, device="cpu").fit()
    for text in ("0", "100000"):
        with pytest.raises(SystemExit):
            main(["fit", "--images", ".", "--out", "m.skcflow", "--image-size", text])
        assert "at most 4096" in capsys.readouterr().err
