import copy
import io
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from skcflow import CFlowAD, FeatureExtractor, load_mvtec, make_pipeline
from skcflow._device import resolve_training_dtype
from skcflow.metrics import image_auroc

from conftest import loo_maps, real_data

FAST = dict(max_iter=30, fiber_batch_size=256, n_coupling_layers=4, condition_dim=32,
            device="cpu", random_state=0)


@pytest.fixture(scope="module")
def fitted(train_features):
    return CFlowAD(**FAST).fit(train_features)


def test_scores_follow_sklearn_conventions(fitted, test_features):
    maps = fitted.anomaly_map(test_features)
    assert maps.shape == (len(test_features), 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    scores = fitted.score_samples(test_features)
    np.testing.assert_allclose(fitted.decision_function(test_features), scores - fitted.offset_)
    labels = fitted.predict(test_features)
    assert set(labels) <= {-1, 1}
    np.testing.assert_array_equal(labels == -1, scores < fitted.offset_)
    masks = fitted.predict_mask(test_features)
    assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    np.testing.assert_array_equal(masks.reshape(len(masks), -1).any(1),
                                  maps.reshape(len(maps), -1).max(1) > fitted.pixel_threshold_)


def test_image_score_is_the_coarsest_levels_least_likely_position(fitted, test_features):
    # -log P of the coarsest level, P relative to the best training vector
    # at each position, computed independently.
    with torch.inference_mode():
        coarsest = fitted._level_log_probs(test_features)[-1].double()
    expected = (fitted.log_prob_max_[-1].double() - coarsest).clamp(min=0).flatten(1).amax(1).numpy()
    np.testing.assert_allclose(-fitted.score_samples(test_features), expected, rtol=1e-6)
    # Training images are flagged as often as they get a non-empty mask.
    flagged = (fitted.training_scores_ > -fitted.offset_).mean()
    masked = (fitted.training_map_maxima_ > fitted.pixel_threshold_).mean()
    assert flagged == masked > 0


def test_image_score_map_is_the_maps_maximum(train_features, test_features):
    model = CFlowAD(**FAST, image_score="map").fit(train_features)
    maps = model.anomaly_map(test_features)
    scores = model.score_samples(test_features)
    np.testing.assert_allclose(scores, -maps.reshape(len(maps), -1).max(1), rtol=1e-6)
    # The default pixel threshold is then the image threshold.
    masks = model.predict_mask(test_features)
    np.testing.assert_array_equal(masks.reshape(len(masks), -1).any(1), model.predict(test_features) == -1)


def _level_probabilities(fitted, batch, reference, scale):
    total = 0
    with torch.inference_mode():
        log_probs = fitted._level_log_probs(batch)
    for level, log_prob in enumerate(log_probs):
        prob = torch.exp(((log_prob.double() - reference(level)) / scale(level)).clamp(max=0))
        total = total + torch.nn.functional.interpolate(prob[:, None], size=(64, 64), mode="bilinear")[:, 0]
    return total


@pytest.mark.parametrize("normalization", ["calibrated", "position", "level"])
def test_map_ranks_pixels_as_the_papers_aggregation(fitted, test_features, normalization):
    # S = K - sum_k upsample(P_k), computed independently in float64, each
    # level's P_k relative to its best training vector at the same
    # position, or in the level, and then in units of the training
    # vectors' mean distance to it.
    model = clone(fitted).set_params(normalization=normalization)
    model.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_") and not k.startswith("_")})
    batch = test_features[:3]
    best = [m.double().max() for m in fitted.log_prob_max_]
    reference = {"position": lambda k: fitted.log_prob_max_[k].double()}.get(normalization, lambda k: best[k])
    scale = (lambda k: best[k] - fitted.log_prob_mean_[k]) if normalization == "calibrated" else (lambda k: 1.0)
    total = _level_probabilities(fitted, batch, reference, scale)
    n_levels = len(fitted.levels_)
    paper = (n_levels - total).numpy()
    ours = model.anomaly_map(batch)
    np.testing.assert_allclose(ours, -np.log(1 - paper / n_levels), rtol=1e-5, atol=1e-6)
    assert (ours >= 0).all()


def test_calibration_scales_each_level_by_its_training_spread(train_features, fitted):
    with torch.inference_mode():
        training = fitted._level_log_probs(train_features, len(train_features))
    for mean, log_prob in zip(fitted.log_prob_mean_, training):
        assert mean == pytest.approx(log_prob.double().mean().item(), rel=1e-9)
    # The levels' spreads differ: one scale for all would favour one level.
    spreads = [m.max().item() - mean for m, mean in zip(fitted.log_prob_max_, fitted.log_prob_mean_)]
    assert min(spreads) > 0 and max(spreads) / min(spreads) > 1.1


def test_probabilities_are_relative_to_each_positions_best_training_vector(train_features, fitted):
    with torch.inference_mode():
        training = fitted._level_log_probs(train_features, len(train_features))
    for level, (maximum, log_prob) in enumerate(zip(fitted.log_prob_max_, training)):
        _, height, width = fitted.feature_shapes_[fitted.levels_[level]]
        assert maximum.shape == (height, width)
        assert torch.equal(maximum, log_prob.amax(0))
        # Positions differ in how concentrated their densities are.
        assert maximum.max() - maximum.min() > 0.1


@pytest.mark.parametrize("n_levels, expected", [(None, [0, 1, 2]), (7, [0, 1, 2]), (1, [2])])
def test_n_levels_keeps_the_coarsest_levels(train_features, test_features, n_levels, expected):
    model = CFlowAD(**{**FAST, "max_iter": 2, "n_levels": n_levels}).fit(train_features)
    assert model.levels_ == expected
    assert [flow.dim for flow in model.flows_] == [train_features.shapes[k][0] for k in expected]
    assert model.anomaly_map(test_features).shape == (len(test_features), 64, 64)


def test_default_models_the_two_coarsest_levels(fitted, train_features):
    assert len(train_features.maps) == 3 and fitted.levels_ == [1, 2]


def test_neighborhood_averages_each_vector_with_its_neighbours(fitted, train_features):
    batch = train_features[:2]
    for index, averaged in zip(fitted.levels_, fitted._levels(batch)):
        fmap = batch.maps[index]
        assert averaged.shape == fmap.shape
        torch.testing.assert_close(averaged[..., 2, 3], fmap[..., 1:4, 2:5].mean((-2, -1)))
        # Borders average the neighbours that exist.
        torch.testing.assert_close(averaged[..., 0, 0], fmap[..., :2, :2].mean((-2, -1)))
    plain = clone(fitted).set_params(neighborhood=1)
    plain.levels_, plain.channels_ = fitted.levels_, fitted.channels_
    for index, same in zip(plain.levels_, plain._levels(batch)):
        assert same is batch.maps[index]


def test_few_training_images_still_rank_anomalies(synthetic, train_features, test_features):
    # Six images for 112 channels: the whitening leans on the level's
    # average covariance, and maps stay informative rather than at the floor.
    model = CFlowAD(**FAST).fit(train_features[:6])
    assert min(model.shrinkage_) > 0.3
    maps = model.anomaly_map(test_features)
    normal = synthetic.test.target == 0
    assert np.isfinite(maps).all() and maps[normal].max() < 100
    assert image_auroc(synthetic.test.target, -model.score_samples(test_features)) > 0.8


def test_neighborhood_must_be_odd(train_features):
    with pytest.raises(ValueError, match="odd"):
        CFlowAD(**{**FAST, "neighborhood": 2}).fit(train_features)


def test_anomalous_images_score_lower(fitted, synthetic, test_features):
    scores = fitted.score_samples(test_features)
    assert image_auroc(synthetic.test.target, -scores) > 0.8


def test_thresholds_come_from_leave_one_out_training_maps(train_features, fitted):
    loo = loo_maps(fitted, train_features)
    # Left out of the whitening it helped fit, a training image looks less
    # normal, as a new normal image does.
    assert loo.mean() > fitted.anomaly_map(train_features).mean()
    loo_maxima = loo.reshape(len(loo), -1).max(1)
    np.testing.assert_allclose(fitted.training_map_maxima_, loo_maxima, rtol=1e-6)
    assert fitted.pixel_threshold_ == pytest.approx(np.quantile(loo_maxima, 1 - fitted.contamination))
    # The image scores too: of the coarsest level's leave-one-out likelihoods.
    with torch.inference_mode():
        coarsest = fitted._level_log_probs(train_features, len(train_features))[-1].double()
    loo_scores = (fitted.log_prob_max_[-1] - coarsest).clamp(min=0).flatten(1).amax(1).numpy()
    assert fitted.offset_ == pytest.approx(np.quantile(-loo_scores, fitted.contamination))
    assert np.mean(fitted.predict(train_features) == -1) <= 0.05


def test_without_whitening_it_is_the_papers_decoder(train_features, test_features, fitted):
    plain = CFlowAD(whiten=False, n_levels=None, neighborhood=1, **FAST).fit(train_features)
    assert plain.whitening_ is None
    flow_bytes = sum(t.numel() * t.element_size() for t in plain.flows_.state_dict().values())
    assert plain.model_size_bytes_ == flow_bytes < fitted.model_size_bytes_
    # Without whitening, training maps are the in-sample ones.
    loo = loo_maps(plain, train_features)
    np.testing.assert_array_equal(loo, plain.anomaly_map(train_features))
    maps = plain.anomaly_map(test_features)
    assert np.isfinite(maps).all()
    assert not np.allclose(maps, fitted.anomaly_map(test_features))


def test_image_alone_or_in_batch_gives_same_map(fitted, test_features):
    batch = test_features[:12]
    together = fitted.anomaly_map(batch)
    for i in (0, 5, 11):
        alone = fitted.anomaly_map(test_features[i])
        assert np.abs(alone[0] - together[i]).max() <= 1e-5


def test_batch_size_does_not_change_maps(fitted, test_features):
    other = clone(fitted).set_params(batch_size=5)
    other.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    assert np.abs(other.anomaly_map(test_features) - fitted.anomaly_map(test_features)).max() <= 1e-5


def test_same_random_state_same_model(train_features, test_features, fitted):
    again = CFlowAD(**FAST).fit(train_features)
    np.testing.assert_array_equal(again.score_samples(test_features), fitted.score_samples(test_features))
    other = CFlowAD(**{**FAST, "random_state": 1}).fit(train_features)
    assert not np.array_equal(other.score_samples(test_features), fitted.score_samples(test_features))


def test_fit_uses_only_normal_samples(synthetic, extractor, train_features, test_features):
    # Folds of model selection hold anomalies: fit(X, y) drops them.
    mixed = extractor.transform(np.concatenate([synthetic.train.images, synthetic.test.images]))
    y = np.concatenate([np.zeros(len(synthetic.train.images)), synthetic.test.target])
    masks = np.concatenate([np.zeros_like(synthetic.train.masks), synthetic.test.masks])
    normal = np.flatnonzero(y == 0)
    reference = CFlowAD(**FAST).fit(mixed[normal]).score_samples(test_features)
    for labels in (y, masks):
        model = CFlowAD(**FAST).fit(mixed, labels)
        assert model.n_train_samples_ == len(normal) < len(y)
        np.testing.assert_array_equal(model.score_samples(test_features), reference)


def test_joblib_round_trip_gives_identical_scores(fitted, test_features):
    buffer = io.BytesIO()
    joblib.dump(fitted, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    assert loaded.device_ == torch.device("cpu")
    np.testing.assert_array_equal(loaded.anomaly_map(test_features), fitted.anomaly_map(test_features))


def test_methods_before_fit_raise(test_features):
    model = CFlowAD()
    for method in ("score_samples", "decision_function", "predict", "anomaly_map", "predict_mask"):
        with pytest.raises(NotFittedError):
            getattr(model, method)(test_features)


def test_clone_and_params():
    model = CFlowAD(n_coupling_layers=4, clamp=1.2)
    params = model.get_params()
    assert params["n_coupling_layers"] == 4 and params["clamp"] == 1.2
    copy = clone(model).set_params(n_coupling_layers=6)
    assert copy.n_coupling_layers == 6 and model.n_coupling_layers == 4


@pytest.mark.parametrize("params", [{"n_coupling_layers": 0}, {"clamp": -1.0},
                                    {"activation": "tanh"}, {"contamination": 0.9},
                                    {"learning_rate": 0.0}, {"n_levels": 0},
                                    {"neighborhood": 0}])
def test_invalid_parameters(params, train_features):
    with pytest.raises(InvalidParameterError):
        CFlowAD(**{**FAST, **params}).fit(train_features)


def test_condition_dim_must_be_multiple_of_four(train_features):
    with pytest.raises(ValueError, match="multiple of 4"):
        CFlowAD(**{**FAST, "condition_dim": 30}).fit(train_features)


def test_raw_images_are_refused_with_a_hint(synthetic):
    with pytest.raises(TypeError, match="make_pipeline"):
        CFlowAD(**FAST).fit(synthetic.train.images)


def test_feature_shape_mismatch(fitted, synthetic):
    other = FeatureExtractor(image_size=96, device="cpu").fit_transform(synthetic.test.images[:2])
    with pytest.raises(ValueError, match="fitted on"):
        fitted.score_samples(other)


def test_diverging_training_stops_with_advice(train_features):
    model = CFlowAD(**{**FAST, "learning_rate": 1e6, "clamp": 50.0})
    with pytest.raises(FloatingPointError, match="learning_rate"):
        model.fit(train_features)


def test_rotation_augmentation_trains(train_features, test_features):
    model = CFlowAD(**{**FAST, "rotation": 5.0}).fit(train_features)
    assert np.isfinite(model.score_samples(test_features)).all()
    assert model.loss_curve_[0][-1] < model.loss_curve_[0][0]


def test_n_epochs_sets_the_budget(train_features):
    model = CFlowAD(**{**FAST, "n_epochs": 1, "max_iter": 10_000}).fit(train_features)
    n_fibers = [len(train_features) * h * w for _, h, w in train_features.shapes[1:]]
    assert model.n_iter_ == [int(np.ceil(n / 256)) for n in n_fibers]


def test_early_stopping_on_converged_loss(train_features):
    budget = {**FAST, "max_iter": 400, "learning_rate": 1e-3}
    full = CFlowAD(**budget).fit(train_features)
    early = CFlowAD(**budget, tol=0.05, n_iter_no_change=2).fit(train_features)
    assert full.n_iter_ == [400, 400]
    assert all(n < 400 and n % 10 == 0 for n in early.n_iter_)
    # The loss it stopped at is near the full run's.
    for short, long in zip(early.loss_curve_, full.loss_curve_):
        assert np.mean(short[-10:]) < np.mean(long[:10])


def test_model_size_counts_decoders_and_whitening(fitted):
    n_values = sum(p.numel() for p in fitted.flows_.parameters())
    n_values += sum(b.numel() for b in fitted.whitening_.buffers())
    assert fitted.model_size_bytes_ >= 4 * n_values


def test_pipeline_on_real_bottle_subset():
    root = real_data("mvtec_ad")
    train = load_mvtec(root, "bottle", split="train", image_size=128)
    test = load_mvtec(root, "bottle", split="test", image_size=128)
    pipe = make_pipeline(
        FeatureExtractor(image_size=128, device="cpu"),
        CFlowAD(max_iter=40, fiber_batch_size=1024, device="cpu", random_state=0),
    )
    pipe.fit(train.images[:40])
    scores = -pipe.score_samples(test.images)
    maps = pipe.anomaly_map(test.images)
    assert maps.shape == (len(test.images), 128, 128)
    assert image_auroc(test.target, scores) > 0.9


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_inference_changes_maps_by_rounding_only(fitted, train_features,
                                                                test_features, dtype):
    half = CFlowAD(**FAST, inference_dtype=dtype).fit(train_features)
    for a, b in zip(half.flows_.state_dict().values(), fitted.flows_.state_dict().values()):
        assert torch.equal(a, b)  # inference_dtype leaves training as it is
    expected = fitted.anomaly_map(test_features)
    maps = half.anomaly_map(test_features)
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    assert not np.array_equal(maps, expected)
    np.testing.assert_allclose(maps, expected, rtol=0, atol=0.01 * np.ptp(expected))


@pytest.mark.parametrize("capabilities, expected", [
    ({"avx512_bf16": True, "amx_bf16": False}, "bfloat16"),
    ({"avx512_bf16": False, "amx_bf16": True}, "bfloat16"),
    ({"avx512_bf16": False, "amx_bf16": False}, "float32"),
])
def test_training_dtype_auto_is_bfloat16_where_the_cpu_computes_it(train_features, monkeypatch,
                                                                   capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert CFlowAD(**{**FAST, "max_iter": 2}).fit(train_features).training_dtype_ == expected
    assert resolve_training_dtype("auto", torch.device("cuda")) == "float32"
    assert resolve_training_dtype("float32", torch.device("cpu")) == "float32"


def test_bfloat16_training_changes_the_model_less_than_another_seed(train_features, test_features):
    def fit(**params):
        return CFlowAD(**{**FAST, "max_iter": 60, **params}).fit(train_features)

    exact, half = fit(training_dtype="float32"), fit(training_dtype="bfloat16")
    assert (exact.training_dtype_, half.training_dtype_) == ("float32", "bfloat16")
    assert all(p.dtype == torch.float32 for p in half.flows_.parameters())
    maps, half_maps = exact.anomaly_map(test_features), half.anomaly_map(test_features)
    assert not np.array_equal(half_maps, maps) and np.isfinite(half_maps).all()
    np.testing.assert_array_equal(fit(training_dtype="bfloat16").anomaly_map(test_features), half_maps)
    other_seed = fit(training_dtype="float32", random_state=1).anomaly_map(test_features)
    assert np.abs(half_maps - maps).mean() < np.abs(other_seed - maps).mean()


def test_large_whitening_warns(train_features, monkeypatch):
    import skcflow.cflow

    monkeypatch.setattr(skcflow.cflow, "_WHITEN_WARN_BYTES", 1000)
    with pytest.warns(UserWarning, match="whiten=False"):
        CFlowAD(**{**FAST, "max_iter": 2}).fit(train_features)


def test_max_dims_models_a_random_subset_of_wide_levels(train_features, test_features, tmp_path):
    import skcflow

    narrow = CFlowAD(**{**FAST, "max_dims": 16}).fit(train_features)
    dims = [train_features.shapes[k][0] for k in narrow.levels_]
    assert [len(c) for c in narrow.channels_] == [16, 16]
    for channels, dim in zip(narrow.channels_, dims):
        assert (channels.diff() > 0).all() and channels.max() < dim
    again = CFlowAD(**{**FAST, "max_dims": 16}).fit(train_features)
    assert all(torch.equal(a, b) for a, b in zip(narrow.channels_, again.channels_))
    full = CFlowAD(**FAST).fit(train_features)
    assert [len(c) for c in full.channels_] == dims
    assert narrow.model_size_bytes_ < full.model_size_bytes_ / 4
    maps = narrow.anomaly_map(test_features)
    assert np.isfinite(maps).all()
    skcflow.save(narrow, tmp_path / "narrow.skcflow")
    np.testing.assert_array_equal(skcflow.load(tmp_path / "narrow.skcflow").anomaly_map(test_features), maps)


def test_max_dims_selects_channels_before_everything_else(train_features, test_features):
    narrow = CFlowAD(**{**FAST, "max_dims": 16}).fit(train_features)
    # The same model on features cut to its channels beforehand: the same maps.
    with torch.inference_mode():
        direct = [narrow._maps().log_prob(i, m, None) for i, m in enumerate(
            [test_features.maps[k][:, c] for k, c in zip(narrow.levels_, narrow.channels_)])]
        through = narrow._level_log_probs(test_features)
    for a, b in zip(direct, through):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("level", [0, -1])
def test_a_corrupt_model_raises_rather_than_returning_non_finite_maps(fitted, test_features, level):
    corrupt = copy.deepcopy(fitted)
    with torch.no_grad():
        corrupt.flows_[level].couplings[0].out.bias[-1] = float("nan")
    corrupt._cache_maps = None
    with pytest.raises(FloatingPointError, match="non-finite"):
        corrupt.anomaly_map(test_features[:2])
    # Image scores come from the coarsest level alone, unless from the map.
    if level == 0:
        corrupt.set_params(image_score="map")
    with pytest.raises(FloatingPointError, match="non-finite"):
        corrupt.score_samples(test_features[:2])


def test_auto_levels_without_synthetic_defects_are_the_two_coarsest(fitted, train_features, test_features):
    assert fitted.n_levels == "auto" and fitted.level_selection_ is None
    assert fitted.levels_ == [len(train_features.shapes) - 2, len(train_features.shapes) - 1]
    two = CFlowAD(**FAST, n_levels=2).fit(train_features)
    np.testing.assert_array_equal(two.anomaly_map(test_features), fitted.anomaly_map(test_features))


def test_auto_levels_are_chosen_on_synthetic_defects_in_a_pipeline(synthetic, tmp_path):
    import skcflow
    from skcflow.pipeline import synthetic_defects

    def pipeline():
        return make_pipeline(FeatureExtractor(image_size=64, device="cpu"), CFlowAD(**FAST))

    pipe = pipeline().fit(synthetic.train.images)
    model, n_available = pipe[-1], 3
    candidates = [k for k, _ in model.level_selection_]
    assert candidates == list(range(2, n_available + 1))
    assert all(0.5 < score <= 1 for _, score in model.level_selection_)
    best = max(model.level_selection_, key=lambda pair: pair[1])[0]
    assert model.levels_ == list(range(n_available - best, n_available))
    assert len(model.flows_) == len(model.log_prob_max_) == len(model.n_iter_) == best
    # The same model from the features and the helper, outside a pipeline.
    extractor = pipe[0]
    features = extractor.transform(synthetic.train.images)
    alone = CFlowAD(**FAST).fit(features, **synthetic_defects(CFlowAD(**FAST), extractor.transform,
                                                               synthetic.train.images, features))
    assert alone.level_selection_ == model.level_selection_
    # The selection's leave-one-out maps of its images are reused for the
    # thresholds: exactly those of a pass over every training image.
    scores, maxima = alone._training_outputs([features], 0)
    np.testing.assert_array_equal(scores, alone.training_scores_)
    np.testing.assert_array_equal(maxima, alone.training_map_maxima_)
    np.testing.assert_array_equal(alone.anomaly_map(extractor.transform(synthetic.test.images)),
                                  pipe.anomaly_map(synthetic.test.images))
    np.testing.assert_array_equal(pipeline().fit(synthetic.train.images).score_samples(synthetic.test.images),
                                  pipe.score_samples(synthetic.test.images))
    # With memory, the detector pastes its defects on the cached extractor's features.
    cached = make_pipeline(FeatureExtractor(image_size=64, device="cpu"), CFlowAD(**FAST),
                           memory=str(tmp_path / "cache"))
    for _ in range(2):
        assert cached.fit(synthetic.train.images)[-1].level_selection_ == model.level_selection_
    skcflow.save(pipe, tmp_path / "auto.skcflow")
    loaded = skcflow.load(tmp_path / "auto.skcflow")
    assert loaded[-1].level_selection_ == model.level_selection_
    np.testing.assert_array_equal(loaded.anomaly_map(synthetic.test.images), pipe.anomaly_map(synthetic.test.images))


def test_auto_levels_drop_the_finer_decoders_when_fewer_levels_win(synthetic, monkeypatch):
    import skcflow.cflow

    # Equal scores: the tie goes to the fewer levels.
    monkeypatch.setattr(skcflow.cflow, "pixel_auroc", lambda masks, maps: 0.9)
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"), CFlowAD(**FAST)).fit(synthetic.train.images)
    model = pipe[-1]
    assert model.level_selection_ == [[2, 0.9], [3, 0.9]] and model.levels_ == [1, 2]
    assert len(model.flows_) == len(model.whitening_) == len(model.channels_) == len(model.shrinkage_) == 2
    maps = pipe.anomaly_map(synthetic.test.images)
    assert np.isfinite(maps).all() and maps.shape == (len(synthetic.test.images), 64, 64)
    assert model._check_fitted() is None
    # An update trains the kept levels on.
    model.partial_fit(pipe[0].transform(synthetic.test.images[:4]))
    assert model.levels_ == [1, 2] and all(n > FAST["max_iter"] for n in model.n_iter_)


def test_synthetic_defects_are_checked(train_features, synthetic, extractor):
    from skcflow.pipeline import synthetic_defects

    images = synthetic.train.images
    params = synthetic_defects(CFlowAD(**FAST), extractor.transform, images, train_features)
    rows, features, masks = params["synthetic_defects"]
    assert len(rows) == len(features) == len(masks) == len(images)
    with pytest.raises(ValueError, match="n_levels is 2"):
        CFlowAD(**FAST, n_levels=2).fit(train_features, **params)
    assert synthetic_defects(CFlowAD(**FAST, n_levels=2), extractor.transform, images, train_features) == {}
    with pytest.raises(ValueError, match="one length"):
        CFlowAD(**FAST).fit(train_features, synthetic_defects=(rows[:3], features, masks))
    with pytest.raises(ValueError, match="masks are"):
        CFlowAD(**FAST).fit(train_features, synthetic_defects=(rows, features, masks[:, :32]))
    y = np.zeros(len(images), dtype=int)
    y[rows[0]] = 1
    with pytest.raises(ValueError, match="must be normal"):
        CFlowAD(**FAST).fit(train_features, y, synthetic_defects=(rows, features, masks))
    with pytest.raises(ValueError, match="not a stream"):
        CFlowAD(**FAST).fit([train_features], synthetic_defects=(rows, features, masks))


def test_auto_levels_choose_every_level_on_bottle_and_two_on_magnetic_tiles():
    # The choice n_levels="auto" makes on good images alone is the better
    # one of the real test sets (benchmarks/results/levels.md).
    chosen = {}
    for category, folder, expected in (("bottle", "mvtec_ad", 3), ("magnetic_tile", "mtd", 2)):
        train = load_mvtec(real_data(folder), category, split="train", image_size=256)
        pipe = make_pipeline(FeatureExtractor(device="cpu"), CFlowAD(random_state=0)).fit(train.images)
        chosen[category] = (len(pipe[-1].levels_), expected, pipe[-1].level_selection_)
    assert all(n == expected for n, expected, _ in chosen.values()), chosen


def test_images_scored_in_pieces_get_the_maps_they_get_alone(synthetic, fitted, monkeypatch):
    # At 128 px every modelled level is large enough for a CPU worker to
    # score several images at once (CFlowAD._cpu_piece_images); at 64 px
    # the coarsest has too few positions, and images go one at a time.
    extractor = FeatureExtractor(image_size=128, device="cpu").fit()
    train = extractor.transform(synthetic.train.images)
    test = extractor.transform(synthetic.test.images[:11])
    model = CFlowAD(**FAST).fit(train)
    assert model._cpu_piece_images() > 1
    assert fitted._cpu_piece_images() == 1
    pieces = []
    batch_maps = CFlowAD._batch_maps
    monkeypatch.setattr(CFlowAD, "_batch_maps", lambda self, f: pieces.append(len(f)) or batch_maps(self, f))
    together, scores = model.anomaly_map(test), model.score_samples(test)
    assert max(pieces) > 1
    for i in range(len(test)):
        np.testing.assert_array_equal(model.anomaly_map(test[i]), together[i : i + 1])
        np.testing.assert_array_equal(model.score_samples(test[i]), scores[i : i + 1])
    np.testing.assert_array_equal(copy.copy(model).set_params(batch_size=5).anomaly_map(test), together)
    # The training images' leave-one-out maps, in pieces during fit, too.
    monkeypatch.setattr(CFlowAD, "_cpu_piece_images", lambda self: 1)
    alone = CFlowAD(**FAST).fit(train)
    assert alone.offset_ == model.offset_
    assert all(torch.equal(a, b) for a, b in zip(alone.log_prob_max_, model.log_prob_max_))


@pytest.mark.parametrize("image_score", ["coarsest", "map"])
def test_the_decoder_graphs_score_exactly_as_the_decoders_do(synthetic, image_score):
    extractor = FeatureExtractor(image_size=128, device="cpu").fit()
    model = CFlowAD(**FAST, image_score=image_score).fit(extractor.transform(synthetic.train.images))
    test = extractor.transform(synthetic.test.images[:11])
    eager = copy.copy(model).set_params(graph=False)
    expected_maps, expected_scores = eager.anomaly_map(test), eager.score_samples(test)
    assert "_cache_graphs" not in vars(eager)
    for n_jobs in (1, 2):
        model.set_params(n_jobs=n_jobs)
        with warnings.catch_warnings():
            # Tracing warns of shapes taken as constants; users never see it.
            warnings.simplefilter("error")
            np.testing.assert_array_equal(model.anomaly_map(test), expected_maps)
            np.testing.assert_array_equal(model.score_samples(test), expected_scores)
        np.testing.assert_array_equal(model.anomaly_map(test[3]), expected_maps[3:4])
    # Graphs per level, of the aggregation and of the scores, for whole
    # pieces (8 images) and single images; the last piece (3) ran without.
    graphs = model._cache_graphs._graphs
    assert {key[0] for key in graphs} == {"log_prob", "aggregate", "scores"}
    assert {shape[0][0] for _, _, *shapes in graphs for shape in shapes} == {1, 8}


def test_the_decoder_graphs_are_dropped_by_a_refit_and_never_pickled(train_features, test_features):
    model = CFlowAD(**FAST)
    first = model.fit(train_features).anomaly_map(test_features)
    graphs = model._cache_graphs
    # Another batch size on a CPU scores with the same graphs.
    np.testing.assert_array_equal(model.set_params(batch_size=5).anomaly_map(test_features), first)
    assert model._cache_graphs is graphs
    copied = pickle.loads(pickle.dumps(model))
    assert "_cache_graphs" not in vars(copied)
    np.testing.assert_array_equal(copied.anomaly_map(test_features), first)
    refit = model.set_params(random_state=1).fit(train_features).anomaly_map(test_features)
    assert model._cache_graphs is not graphs and not np.array_equal(refit, first)
    np.testing.assert_array_equal(refit, copy.copy(model).set_params(graph=False).anomaly_map(test_features))
