import io

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from skcflow import SPADE, FeatureExtractor, Features, PaDiM, load_mvtec
from skcflow.metrics import image_auroc

from conftest import loo_maps, real_data

FAST = {
    "padim": lambda **kw: PaDiM(**{"n_features": 40, "device": "cpu", "random_state": 0, **kw}),
    "spade": lambda **kw: SPADE(**{"k": 3, "device": "cpu", **kw}),
}


@pytest.fixture(scope="module", params=sorted(FAST))
def name(request):
    return request.param


@pytest.fixture(scope="module")
def fitted(name, train_features):
    return FAST[name]().fit(train_features)


def pyramid(features):
    """Levels side by side at the finest resolution, in float64 numpy."""
    size = features.maps[0].shape[-2:]
    levels = [F.interpolate(m.double(), size=size, mode="bilinear", align_corners=False)
              for m in features.maps]
    return torch.cat(levels, 1).numpy()


def pooled_knn(train, test, k, leave_out=False):
    """Distances to and indices of the k nearest training images, brute force."""
    a = train.maps[-1].numpy().astype(np.float64).mean((2, 3))
    b = test.maps[-1].numpy().astype(np.float64).mean((2, 3))
    dist = np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1))
    if leave_out:
        np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), order


def expected_scores(model, train, test):
    if isinstance(model, SPADE):
        return -pooled_knn(train, test, model.k)[0].mean(1)
    maps = model.anomaly_map(test)
    return -maps.reshape(len(maps), -1).max(1)


# -- both detectors ---------------------------------------------------------


def test_scores_follow_sklearn_conventions(fitted, train_features, test_features):
    maps = fitted.anomaly_map(test_features)
    assert maps.shape == (len(test_features), 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    scores = fitted.score_samples(test_features)
    np.testing.assert_allclose(scores, expected_scores(fitted, train_features, test_features), rtol=1e-5)
    np.testing.assert_allclose(fitted.decision_function(test_features), scores - fitted.offset_)
    labels = fitted.predict(test_features)
    assert set(labels) <= {-1, 1}
    np.testing.assert_array_equal(labels == -1, scores < fitted.offset_)
    masks = fitted.predict_mask(test_features)
    assert masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, maps > fitted.pixel_threshold_)


def test_anomalous_images_score_lower(fitted, synthetic, test_features):
    assert image_auroc(synthetic.test.target, -fitted.score_samples(test_features)) > 0.8


def test_image_alone_or_in_batch_gives_same_result(fitted, test_features):
    batch = test_features[:12]
    maps, scores = fitted.anomaly_map(batch), fitted.score_samples(batch)
    for i in (0, 5, 11):
        assert np.abs(fitted.anomaly_map(test_features[i])[0] - maps[i]).max() <= 1e-5
        assert abs(fitted.score_samples(test_features[i])[0] - scores[i]) <= 1e-5


def test_fit_uses_only_normal_samples(name, synthetic, extractor, test_features):
    mixed = extractor.transform(np.concatenate([synthetic.train.images, synthetic.test.images]))
    y = np.concatenate([np.zeros(len(synthetic.train.images)), synthetic.test.target])
    masks = np.concatenate([np.zeros_like(synthetic.train.masks), synthetic.test.masks])
    normal = np.flatnonzero(y == 0)
    reference = FAST[name]().fit(mixed[normal])
    for labels in (y, masks):
        model = FAST[name]().fit(mixed, labels)
        assert model.n_train_samples_ == len(normal) < len(y)
        assert model.offset_ == reference.offset_
        np.testing.assert_array_equal(model.anomaly_map(test_features), reference.anomaly_map(test_features))


def test_joblib_round_trip_gives_identical_results(fitted, test_features):
    buffer = io.BytesIO()
    joblib.dump(fitted, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    assert loaded.device_ == torch.device("cpu")
    np.testing.assert_array_equal(loaded.anomaly_map(test_features), fitted.anomaly_map(test_features))
    np.testing.assert_array_equal(loaded.score_samples(test_features), fitted.score_samples(test_features))


@pytest.mark.parametrize("model", [PaDiM(), SPADE()], ids=["padim", "spade"])
def test_methods_before_fit_raise(model, test_features):
    for method in ("score_samples", "decision_function", "predict", "anomaly_map", "predict_mask"):
        with pytest.raises(NotFittedError):
            getattr(model, method)(test_features)


@pytest.mark.parametrize("model, param, value", [(PaDiM(n_features=7, reg=0.5), "n_features", 9),
                                                 (SPADE(k=7, sigma=2.0), "k", 9)])
def test_clone_and_params(model, param, value):
    params = model.get_params()
    assert params[param] == 7 and ("reg" in params) == isinstance(model, PaDiM)
    assert "random_state" in params if isinstance(model, PaDiM) else "random_state" not in params
    copy = clone(model).set_params(**{param: value})
    assert getattr(copy, param) == value and getattr(model, param) == 7


@pytest.mark.parametrize("name, params", [
    ("padim", {"n_features": 0}), ("padim", {"reg": 0.0}), ("padim", {"sigma": -1.0}),
    ("padim", {"contamination": 0.9}), ("padim", {"batch_size": 0}),
    ("spade", {"k": 0}), ("spade", {"sigma": 0.0}), ("spade", {"contamination": -0.1}),
])
def test_invalid_parameters(name, params, train_features):
    with pytest.raises(InvalidParameterError):
        FAST[name](**params).fit(train_features)


def test_raw_images_are_refused_with_a_hint(name, synthetic):
    with pytest.raises(TypeError, match="make_pipeline"):
        FAST[name]().fit(synthetic.train.images)


# -- PaDiM --------------------------------------------------------------------


@pytest.fixture(scope="module")
def padim(train_features):
    return FAST["padim"]().fit(train_features)


def test_padim_same_random_state_same_model(padim, train_features, test_features):
    again = FAST["padim"]().fit(train_features)
    np.testing.assert_array_equal(again.channels_, padim.channels_)
    np.testing.assert_array_equal(again.score_samples(test_features), padim.score_samples(test_features))
    other = FAST["padim"](random_state=1).fit(train_features)
    assert not np.array_equal(other.channels_, padim.channels_)
    assert not np.array_equal(other.score_samples(test_features), padim.score_samples(test_features))


def test_padim_streamed_gaussians_match_numpy(train_features):
    # Several batches, so that the running sums are really streamed.
    model = PaDiM(n_features=20, reg=0.5, batch_size=5, device="cpu", random_state=0)
    model.fit(train_features)
    x = pyramid(train_features)[:, model.channels_]
    x = x.reshape(len(x), x.shape[1], -1).transpose(2, 0, 1)
    mean = x.mean(1)
    precision = np.stack([np.linalg.inv(np.cov(v, rowvar=False) + 0.5 * np.eye(20)) for v in x])
    np.testing.assert_allclose(model.mean_.numpy(), mean, atol=1e-4, rtol=0)
    scale = np.abs(precision).max()
    np.testing.assert_allclose(model.precision_.numpy() / scale, precision / scale, atol=1e-4, rtol=0)


def test_padim_map_is_the_mahalanobis_distance(train_features, test_features):
    # sigma small enough for a one-tap kernel and maps at the finest
    # resolution: the map is the raw distance.
    train = Features(train_features.maps, (16, 16))
    small = Features(test_features.maps, (16, 16))
    model = PaDiM(n_features=10, sigma=0.1, device="cpu", random_state=0).fit(train)
    x = pyramid(small)[:, model.channels_]
    delta = x.transpose(0, 2, 3, 1) - model.mean_.numpy().reshape(16, 16, 10)
    precision = model.precision_.numpy().astype(np.float64).reshape(16, 16, 10, 10)
    expected = np.sqrt(np.einsum("nhwi,hwij,nhwj->nhw", delta, precision, delta))
    np.testing.assert_allclose(model.anomaly_map(small), expected, rtol=1e-4, atol=1e-4)


def test_padim_model_size_counts_means_and_inverse_covariances(padim, train_features):
    n_positions, dim = 16 * 16, 40
    assert padim.mean_.shape == (n_positions, dim) and padim.precision_.shape == (n_positions, dim, dim)
    assert padim.precision_.dtype == torch.float32
    assert padim.model_size_bytes_ == 4 * (n_positions * dim + n_positions * dim * dim)


def test_padim_n_features_is_capped_at_the_channel_count(train_features):
    model = PaDiM(n_features=10_000, device="cpu", random_state=0).fit(train_features[:6])
    np.testing.assert_array_equal(model.channels_, np.arange(24 + 40 + 112))


def test_padim_training_thresholds_are_leave_one_out(train_features):
    # Maps at the finest resolution with a one-tap kernel: the raw distances.
    train = Features(train_features.maps, (16, 16))
    model = PaDiM(n_features=10, sigma=0.1, device="cpu", random_state=0).fit(train)
    loo = loo_maps(model, train)
    n = len(train)
    for i in (0, 7, n - 1):
        rest = np.arange(n) != i
        alone = PaDiM(n_features=10, sigma=0.1, device="cpu", random_state=0).fit(train[rest])
        expected = alone.anomaly_map(train[[i]])[0]
        # The closed form keeps the covariance's divisor at n - 1 where a
        # refit uses n - 2: a relative error of about 1 / n in the squares.
        np.testing.assert_allclose(loo[i] ** 2, expected ** 2, rtol=1.5 / n)
        in_sample = model.anomaly_map(train[[i]])[0]
        assert (in_sample < expected).all() and in_sample.mean() < 0.8 * expected.mean()
    assert model.offset_ == pytest.approx(np.quantile(-loo.reshape(n, -1).max(1), model.contamination))
    assert model.pixel_threshold_ == -model.offset_


# -- SPADE --------------------------------------------------------------------


@pytest.fixture(scope="module")
def spade(train_features):
    return FAST["spade"]().fit(train_features)


def tiny_features(n_images, seed):
    generator = torch.Generator().manual_seed(seed)
    maps = [torch.randn(n_images, 4, 4, 4, generator=generator),
            torch.randn(n_images, 6, 2, 2, generator=generator)]
    return Features(maps, (4, 4))


def brute_force_maps(train, test, k, leave_out=False):
    _, near = pooled_knn(train, test, k, leave_out)
    gallery, queries = pyramid(train), pyramid(test)
    maps = []
    for query, images in zip(queries, near):
        candidates = gallery[images].transpose(1, 0, 2, 3).reshape(gallery.shape[1], -1)
        dist = np.sqrt(((query.reshape(len(query), -1)[:, :, None] - candidates[:, None]) ** 2).sum(0))
        maps.append(dist.min(1).reshape(query.shape[1:]))
    return np.stack(maps)


def test_spade_pixel_distance_matches_brute_force():
    train, test = tiny_features(7, 0), tiny_features(3, 1)
    # sigma=0.1 gives a one-tap kernel and input_size is the finest level's:
    # the map is the raw nearest-neighbour distance.
    model = SPADE(k=2, sigma=0.1, device="cpu").fit(train)
    np.testing.assert_allclose(model.anomaly_map(test), brute_force_maps(train, test, 2), rtol=1e-5, atol=1e-6)
    loo = loo_maps(model, train)
    np.testing.assert_allclose(loo, brute_force_maps(train, train, 2, leave_out=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.training_scores_,
                               pooled_knn(train, train, 2, leave_out=True)[0].mean(1), rtol=1e-5)


def test_spade_training_thresholds_are_leave_one_out(spade, train_features):
    # Scored as test images, training images find themselves at distance 0 ...
    assert np.all(spade.anomaly_map(train_features[:4]) == 0)
    # ... so the thresholds come from scores and maps with each left out.
    loo_scores, loo_maxima = spade.training_scores_, spade.training_map_maxima_
    assert np.all(loo_scores > 0) and np.all(loo_maxima > 0)
    assert spade.offset_ == pytest.approx(np.quantile(-loo_scores, spade.contamination))
    assert spade.pixel_threshold_ == pytest.approx(np.quantile(loo_maxima, 1 - spade.contamination))


def test_spade_pixel_threshold_flags_as_many_training_images(spade, train_features):
    loo_maxima = spade.training_map_maxima_
    assert np.mean(loo_maxima > spade.pixel_threshold_) <= 0.05


def test_spade_model_size_is_the_gallery(spade, train_features):
    n_images, n_positions, dim = len(train_features), 16 * 16, 24 + 40 + 112
    assert spade.gallery_.shape == (n_images, n_positions, dim)
    assert spade.model_size_bytes_ == 4 * (n_images * n_positions * dim + n_images * 112)


def test_spade_k_is_capped_and_one_image_is_refused(train_features, test_features):
    capped = SPADE(k=100, device="cpu").fit(train_features[:4])
    np.testing.assert_allclose(capped.score_samples(test_features),
                               -pooled_knn(train_features[:4], test_features, 3)[0].mean(1), rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        SPADE(device="cpu").fit(train_features[:1])


# -- real data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bottle():
    root = real_data("mvtec_ad")
    train = load_mvtec(root, "bottle", split="train", image_size=128)
    test = load_mvtec(root, "bottle", split="test", image_size=128)
    extractor = FeatureExtractor(image_size=128, device="cpu").fit()
    return extractor.transform(train.images[:40]), extractor.transform(test.images), test.target


@pytest.mark.parametrize("model", [PaDiM(device="cpu", random_state=0), SPADE(device="cpu")],
                         ids=["padim", "spade"])
def test_real_bottle_subset(model, bottle):
    train, test, target = bottle
    model.fit(train)
    assert image_auroc(target, -model.score_samples(test)) > 0.9


def test_padim_channel_subset_that_misses_a_level(train_features, test_features):
    # 10 channels out of 24 + 40 + 112 often include none of the second
    # level's, which then has nothing to upsample.
    for seed in range(100):
        model = PaDiM(n_features=10, device="cpu", random_state=seed)
        model.fit(train_features[:4])
        if not ((model.channels_ >= 24) & (model.channels_ < 64)).any():
            break
    else:
        pytest.fail("no seed drew a subset without level-1 channels")
    assert len(model.channels_) == 10
    assert np.isfinite(model.anomaly_map(test_features)).all()
