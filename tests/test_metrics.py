import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.base import BaseEstimator
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.validation import check_is_fitted

from skcflow.metrics import (
    aupro,
    get_scorer,
    get_scorer_names,
    image_auroc,
    pixel_auroc,
)

# --- Slow reference, written from the definition with plain loops. ---------


def reference_regions(mask):
    """8-connected regions of a 2-D boolean mask, by flood fill."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, region = [start], []
        while stack:
            i, j = stack.pop()
            region.append((i, j))
            for a in (i - 1, i, i + 1):
                for b in (j - 1, j, j + 1):
                    inside = 0 <= a < height and 0 <= b < width
                    if inside and mask[a, b] and not seen[a, b]:
                        seen[a, b] = True
                        stack.append((a, b))
        regions.append(region)
    return regions


def reference_pro_curve(masks, maps):
    """(FPR, PRO) points, from threshold +inf down to the lowest map value."""
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float64)
    region_values = []
    for mask, amap in zip(masks, maps):
        for region in reference_regions(mask):
            region_values.append(np.array([amap[i, j] for i, j in region]))
    normal_values = maps[~masks]
    points = [(0.0, 0.0)]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        fpr = np.mean(normal_values >= threshold)
        pro = np.mean([np.mean(values >= threshold) for values in region_values])
        points.append((fpr, pro))
    return points


def reference_area(points, fpr_limit):
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def reference_aupro(masks, maps, fpr_limit=0.3):
    return reference_area(reference_pro_curve(masks, maps), fpr_limit)


# --- Data. -------------------------------------------------------------------


def random_case(seed, n_images=5, size=14, quantised=False):
    """Masks with rectangles and scattered pixels (so diagonal contacts and
    several regions per image), some images without defects, and maps that
    partly follow the masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    for mask in masks[: n_images - 2]:
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 2, 2)
            height, width = rng.integers(1, 5, 2)
            mask[top : top + height, left : left + width] = True
        mask |= rng.random((size, size)) < 0.03
    maps = rng.random(masks.shape) + rng.random() * masks
    if quantised:
        maps = np.round(maps * 6) / 6
    return masks, maps


def two_region_case():
    """Region 0 sits in image 0, region 1 in image 1; normal pixels in [0, 1)."""
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 2:5, 2:5] = True
    masks[1, 5:9, 4:7] = True
    return masks, rng.random(masks.shape)


# --- aupro against the reference. ---------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantised", [False, True])
def test_aupro_matches_reference_on_random_cases(seed, quantised):
    masks, maps = random_case(seed, quantised=quantised)
    # float32 and float64 maps take different sort paths; the reference sees
    # the float32 values exactly after conversion.
    maps = maps.astype(np.float32 if seed % 2 else np.float64)
    points = reference_pro_curve(masks, maps)
    for fpr_limit in (0.01, 0.05, 0.3, 0.77, 1.0):
        expected = reference_area(points, fpr_limit)
        assert aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_reference_itself_on_a_hand_computed_curve():
    # One region of two pixels, two normal pixels; values 3 > 2 > 1 > 0:
    # points (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
    masks = np.array([[[1, 0], [1, 0]]])
    maps = np.array([[[3.0, 2.0], [1.0, 0.0]]])
    assert reference_pro_curve(masks, maps) == [
        (0.0, 0.0),
        (0.0, 0.5),
        (0.5, 0.5),
        (0.5, 1.0),
        (1.0, 1.0),
    ]
    assert reference_aupro(masks, maps, 1.0) == pytest.approx(0.75)
    assert aupro(masks, maps, 1.0) == pytest.approx(0.75)
    # Interpolated at 0.25: PRO is 0.5 up to there.
    assert aupro(masks, maps, 0.25) == pytest.approx(0.5)


# --- aupro on constructed cases with known answers. -----------------------------


@pytest.mark.parametrize("fpr_limit", [0.3, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aupro_perfect_map_is_one(fpr_limit, dtype):
    masks, maps = two_region_case()
    maps = (maps + 2 * masks).astype(dtype)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.3, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aupro_one_region_found_and_one_missed_is_one_half(fpr_limit, dtype):
    masks, maps = two_region_case()
    maps[0][masks[0]] += 2  # above every normal pixel
    maps[1][masks[1]] -= 2  # below every normal pixel
    assert aupro(masks, maps.astype(dtype), fpr_limit) == pytest.approx(0.5, abs=1e-12)


def test_aupro_inverted_map_is_zero():
    masks, maps = two_region_case()
    assert aupro(masks, maps - 2 * masks, 1.0) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_constant_map_is_half_the_limit(fpr_limit):
    # One threshold: the curve is the segment from (0, 0) to (1, 1).
    masks, _ = two_region_case()
    value = aupro(masks, np.zeros(masks.shape), fpr_limit)
    assert value == pytest.approx(fpr_limit / 2)


def test_aupro_regions_are_8_connected():
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True  # diagonal: a single region
    masks[0, 4, 4] = True
    maps = np.random.default_rng(1).random(masks.shape)
    maps[0, 1, 1] = maps[0, 4, 4] = 10.0
    maps[0, 2, 2] = -10.0
    # Regions {(1,1), (2,2)} half found and {(4,4)} found: 0.75 throughout
    # (4-connectivity would give three regions and 2/3).
    assert aupro(masks, maps) == pytest.approx(0.75)


def test_aupro_regions_do_not_span_images():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 2, 2] = True
    masks[1, 1:4, 2] = True  # overlaps image 0's region in position only
    maps = np.random.default_rng(2).random(masks.shape)
    maps[0, 2, 2] = 10.0
    maps[1][masks[1]] = -10.0
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_ties_switch_together_including_signed_zeros():
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    maps = np.zeros((1, 4, 4), dtype=np.float32)
    maps[0, 0, 0] = 1.0
    maps[0, 3, ::2] = -0.0  # -0.0 == 0.0: the same threshold
    expected = reference_aupro(masks, maps)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert aupro(masks, maps) == aupro(masks, np.abs(maps))


def test_aupro_uses_normal_pixels_of_defective_images_for_fpr():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    maps = np.zeros(masks.shape)
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0  # the region and 1 of 31 normal pixels
    points = [(0, 0), (1 / 31, 1), (1, 1)]
    assert np.allclose(reference_pro_curve(masks, maps), points)
    # Leaving out the normal pixels of image 0 would give 1.0, counting only
    # those 1 - 0.5 / 15.
    assert aupro(masks, maps, 1.0) == pytest.approx(1 - 0.5 / 31)


# --- Properties. ----------------------------------------------------------------

@st.composite
def small_cases(draw):
    """Masks, integer-valued maps (many ties) and an FPR limit."""
    shape = draw(st.tuples(st.integers(1, 3), st.integers(2, 6), st.integers(2, 6)))
    masks = draw(arrays(bool, shape))
    maps = draw(arrays(np.int8, shape, elements=st.integers(-4, 4)))
    return masks, maps, draw(st.floats(0.01, 1.0))


@settings(max_examples=60, deadline=None)
@given(small_cases())
def test_aupro_property_matches_reference_and_is_in_unit_interval(case):
    masks, maps, fpr_limit = case
    assume(masks.any() and not masks.all())
    value = aupro(masks, maps, fpr_limit)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(reference_aupro(masks, maps, fpr_limit), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(small_cases())
def test_aupro_property_invariant_under_increasing_transforms(case):
    masks, maps, fpr_limit = case
    assume(masks.any() and not masks.all())
    value = aupro(masks, maps, fpr_limit)
    # Exact in floating point for these small integers, so no ties change.
    cubic = maps.astype(np.float64) ** 3 + 2.0 * maps
    dense_rank = np.unique(maps, return_inverse=True)[1].reshape(maps.shape)
    for transformed in (maps.astype(np.float32), cubic, dense_rank):
        assert aupro(masks, transformed, fpr_limit) == pytest.approx(value, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(small_cases())
def test_pixel_auroc_property_matches_sklearn(case):
    masks, maps, _ = case
    assume(masks.any() and not masks.all())
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


# --- pixel_auroc and image_auroc against scikit-learn. ----------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_pixel_auroc_matches_sklearn(seed, dtype):
    masks, maps = random_case(seed, n_images=6, size=20, quantised=seed % 2 == 1)
    maps = (maps * 100).astype(dtype)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_image_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.random(40) < 0.4
    y_true[:2] = [False, True]
    scores = np.round(rng.random(40) + 0.3 * y_true, 1)  # with ties
    expected = roc_auc_score(y_true, scores)
    assert image_auroc(y_true.astype(int), scores) == pytest.approx(expected, abs=1e-12)
    assert image_auroc(y_true, scores.astype(np.float32)) == pytest.approx(
        roc_auc_score(y_true, scores.astype(np.float32)), abs=1e-12
    )


def test_image_auroc_ties_count_half():
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert image_auroc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.3]) == pytest.approx(0.625)


# --- Input handling and validation. -------------------------------------------------


def test_accepts_torch_tensors_and_single_images():
    masks, maps = random_case(0)
    expected = aupro(masks, maps)
    tensor = torch.tensor(maps, dtype=torch.float64, requires_grad=True)
    assert aupro(torch.from_numpy(masks), tensor) == pytest.approx(expected)
    int_masks = torch.from_numpy(masks.astype(np.int64))
    assert pixel_auroc(int_masks, tensor) == pytest.approx(pixel_auroc(masks, maps))
    bfloat16 = torch.from_numpy(maps).to(torch.bfloat16)
    expected = aupro(masks, bfloat16.float().numpy())
    assert aupro(masks, bfloat16) == pytest.approx(expected)
    assert aupro(masks[0], maps[0]) == aupro(masks[:1], maps[:1])


def test_accepts_masks_as_zero_one_numbers():
    masks, maps = random_case(3)
    expected = aupro(masks, maps)
    for dtype in (np.uint8, np.int64, np.float32):
        assert aupro(masks.astype(dtype), maps) == expected


@pytest.mark.parametrize("metric", [aupro, pixel_auroc])
def test_pixel_metrics_validate_inputs(metric):
    masks, maps = random_case(0)
    with pytest.raises(ValueError, match="same shape"):
        metric(masks, maps[:, :-1])
    with pytest.raises(ValueError, match="same shape"):
        metric(masks[:-1], maps)
    with pytest.raises(ValueError, match=r"shape \(n_images, height, width\)"):
        metric(masks.ravel(), maps.ravel())
    for bad in (np.nan, np.inf, -np.inf):
        bad_maps = maps.copy()
        bad_maps[1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            metric(masks, bad_maps)
    with pytest.raises(ValueError, match=r"binary.*255.*masks > 0"):
        metric(masks.astype(np.uint8) * 255, maps)
    with pytest.raises(ValueError, match=r"binary.*0\.5"):
        metric(np.where(masks, 1.0, 0.5), maps)
    with pytest.raises(ValueError, match="binary"):
        metric(masks.astype(str), maps)
    with pytest.raises(ValueError, match="real numbers"):
        metric(masks, maps.astype(str))
    with pytest.raises(ValueError, match="all .* are normal"):
        metric(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="all .* are anomalous"):
        metric(np.ones_like(masks), maps)


@pytest.mark.parametrize("fpr_limit", [0, -0.1, 1.5])
def test_aupro_validates_fpr_limit(fpr_limit):
    masks, maps = random_case(0)
    with pytest.raises(ValueError, match=r"fpr_limit must be in \(0, 1\]"):
        aupro(masks, maps, fpr_limit)


def test_image_auroc_validates_inputs():
    with pytest.raises(ValueError, match="same length"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        image_auroc([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="all 3 are normal"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="binary"):
        image_auroc([0, 2], [0.1, 0.2])


# --- Scorers. ----------------------------------------------------------------------


class FakeDetector(BaseEstimator):
    """Anomaly map ``sign * X`` average-pooled by ``pool``; score its maximum."""

    def __init__(self, sign=1, pool=1):
        self.sign = sign
        self.pool = pool

    def fit(self, X, y=None):
        self.n_fitted_ = len(X)
        return self

    def anomaly_map(self, X):
        check_is_fitted(self)
        n, height, width = X.shape
        pool = self.pool
        blocks = X.reshape(n, height // pool, pool, width // pool, pool)
        return self.sign * blocks.mean(axis=(2, 4))

    def score_samples(self, X):
        return -self.anomaly_map(X).max(axis=(1, 2))


def flip_rows(X):
    return X[:, ::-1]


@pytest.fixture
def scorer_data():
    masks, _ = random_case(7, n_images=12, size=16)
    masks[8:] = False  # 8 defective images, 4 normal ones
    rng = np.random.default_rng(7)
    X = rng.random(masks.shape) + 0.7 * masks
    # Each fold gets defective and normal images.
    folds = PredefinedSplit(np.arange(12) % 2)
    return X, masks, folds


def test_scorer_names():
    assert get_scorer_names() == ["aupro", "image_auroc", "pixel_auroc"]
    with pytest.raises(ValueError, match="Unknown scorer 'auroc'.*aupro"):
        get_scorer("auroc")


def test_scorers_compute_the_metrics_with_the_right_sign(scorer_data):
    X, masks, _ = scorer_data
    detector = FakeDetector().fit(X)
    image_score = get_scorer("image_auroc")(detector, X, masks)
    assert image_score == image_auroc(masks.any(axis=(1, 2)), X.max(axis=(1, 2)))
    assert image_score > 0.5
    labels = masks.any(axis=(1, 2)).astype(int)
    assert get_scorer("image_auroc")(detector, X, labels) == image_score
    assert get_scorer("pixel_auroc")(detector, X, masks) == pixel_auroc(masks, X)
    assert get_scorer("aupro")(detector, X, masks) == aupro(masks, X)
    inverted = FakeDetector(sign=-1).fit(X)
    assert get_scorer("pixel_auroc")(inverted, X, masks) == pytest.approx(
        1 - pixel_auroc(masks, X)
    )


def test_pixel_scorers_need_masks(scorer_data):
    X, masks, _ = scorer_data
    detector = FakeDetector().fit(X)
    labels = masks.any(axis=(1, 2))
    for name in ("pixel_auroc", "aupro"):
        with pytest.raises(ValueError, match=f"{name} scorer needs ground-truth masks"):
            get_scorer(name)(detector, X, labels)
    for name in get_scorer_names():
        with pytest.raises(ValueError, match="needs ground truth y"):
            get_scorer(name)(detector, X, None)
    with pytest.raises(ValueError, match=r"got shape \(12, 256\)"):
        get_scorer("aupro")(detector, X, masks.reshape(12, -1))
    with pytest.raises(ValueError, match="binary"):
        get_scorer("aupro")(detector, X, masks * 255)


def test_pixel_scorer_requires_anomaly_map(scorer_data):
    X, masks, _ = scorer_data

    class NoMaps(BaseEstimator):
        def fit(self, X, y=None):
            return self

    with pytest.raises(TypeError, match="NoMaps has no anomaly_map"):
        get_scorer("aupro")(NoMaps().fit(X), X, masks)


def direct_scores(X, masks):
    """What the scorers should give for FakeDetector() on (X, masks)."""
    return {
        "image_auroc": image_auroc(masks.any(axis=(1, 2)), X.max(axis=(1, 2))),
        "pixel_auroc": pixel_auroc(masks, X),
        "aupro": aupro(masks, X),
    }


def test_scorers_in_grid_search_pick_the_right_sign(scorer_data):
    X, masks, folds = scorer_data
    test = folds.test_fold == 0
    expected = direct_scores(X[test], masks[test])
    for name in get_scorer_names():
        search = GridSearchCV(
            FakeDetector(), {"sign": [-1, 1]}, scoring=get_scorer(name), cv=folds
        ).fit(X, masks)
        assert search.best_params_ == {"sign": 1}, name
        split0 = search.cv_results_["split0_test_score"][1]
        assert split0 == pytest.approx(expected[name])


def test_scorers_in_cross_validate(scorer_data):
    X, masks, folds = scorer_data
    scoring = {name: get_scorer(name) for name in get_scorer_names()}
    results = cross_validate(FakeDetector(), X, masks, cv=folds, scoring=scoring)
    for fold in (0, 1):
        test = folds.test_fold == fold
        for name, expected in direct_scores(X[test], masks[test]).items():
            assert results[f"test_{name}"][fold] == pytest.approx(expected)


def test_scorers_through_a_pipeline(scorer_data):
    X, masks, folds = scorer_data
    pipe = Pipeline([("t", FunctionTransformer(flip_rows)), ("det", FakeDetector())])
    pipe.fit(X)
    assert get_scorer("aupro")(pipe, X, masks) == aupro(masks, flip_rows(X))
    assert get_scorer("pixel_auroc")(pipe, X, masks) == pixel_auroc(masks, flip_rows(X))
    assert get_scorer("image_auroc")(pipe, X, masks) == get_scorer("image_auroc")(
        pipe[-1], X, masks
    )
    single = Pipeline([("det", FakeDetector())]).fit(X)
    assert get_scorer("aupro")(single, X, masks) == aupro(masks, X)
    results = cross_validate(
        pipe, X, masks, cv=folds, scoring={"aupro": get_scorer("aupro")}
    )
    assert np.all(results["test_aupro"] >= 0)


def test_pixel_scorers_resize_maps_to_the_masks(scorer_data):
    X, masks, _ = scorer_data
    detector = FakeDetector(pool=2).fit(X)
    small = detector.anomaly_map(X)
    assert small.shape == (12, 8, 8)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(small)[:, None],
        size=(16, 16),
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()
    assert get_scorer("aupro")(detector, X, masks) == aupro(masks, resized)
    assert get_scorer("pixel_auroc")(detector, X, masks) == pixel_auroc(masks, resized)


def test_scorers_accept_tensor_outputs(scorer_data):
    X, masks, _ = scorer_data

    class TensorDetector(FakeDetector):
        def anomaly_map(self, X):
            return torch.from_numpy(super().anomaly_map(X)).float()

    detector = TensorDetector().fit(X)
    expected = aupro(masks, X.astype(np.float32))
    assert get_scorer("aupro")(detector, X, torch.from_numpy(masks)) == expected
