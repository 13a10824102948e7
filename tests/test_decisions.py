"""Decisions without defect samples: p-values, thresholds without a refit, synthetic defects."""

import csv
import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from skcflow import FeatureExtractor, PaDiM, export_onnx, load, make_defects, make_pipeline, save
from skcflow.calibration import conformal_threshold, contamination_for, false_alarm_test, pvalues
from skcflow.cli import main
from skcflow.datasets import paste_defects
from skcflow.metrics import get_scorer
from skcflow.model_selection import synthetic_split
from skcflow.runtime import OnnxDetector

from conftest import FAST_DETECTORS


@pytest.fixture(scope="module", params=sorted(FAST_DETECTORS))
def fitted(request, train_features):
    return request.param, FAST_DETECTORS[request.param]().fit(train_features)


def test_pvalues_are_the_share_of_training_images_at_least_as_anomalous():
    training = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    scores = np.array([0.0, 2.0, 2.5, 5.0, 9.0])
    brute = [(1 + (training >= s).sum()) / 6 for s in scores]
    np.testing.assert_allclose(pvalues(scores, training), brute)
    # Flagging scores above the conformal threshold is flagging p <= a.
    rng = np.random.default_rng(0)
    training = rng.normal(size=99)
    for a in (0.01, 0.05, 0.1, 0.3):
        threshold = conformal_threshold(training, a)
        new = rng.normal(size=2000)
        np.testing.assert_array_equal(new > threshold, pvalues(new, training) <= a)
        c = contamination_for(training, a)
        assert np.quantile(-training, c) == pytest.approx(-threshold)
    # Exchangeable normal scores: the false-alarm rate is at most the level.
    alarms = [(pvalues(rng.normal(size=1), rng.normal(size=49)) <= 0.1).item() for _ in range(3000)]
    assert np.mean(alarms) <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 3000)
    assert false_alarm_test(0, 20, 0.05, 49) == pytest.approx(1.0) and false_alarm_test(8, 20, 0.05, 1000) < 1e-3
    # The count of false alarms against one reference is beta-binomial, wider than binomial.
    for n_alarms, n_normal, a, n in ((6, 20, 0.1, 209), (16, 191, 0.05, 761), (3, 30, 0.05, 9)):
        k = min(math.ceil((1 - a) * (n + 1)), n)
        assert false_alarm_test(n_alarms, n_normal, a, n) == pytest.approx(
            scipy.stats.betabinom(n_normal, n + 1 - k, k).sf(n_alarms - 1))
    simulated = []
    for _ in range(400):
        reference, normal = rng.normal(size=99), rng.normal(size=20)
        simulated.append(false_alarm_test(int((pvalues(normal, reference) <= 0.1).sum()), 20, 0.1, 99))
    # A valid test of a guarantee that holds: it rejects at 5% no more than about 5% of the time.
    assert np.mean(np.array(simulated) <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)


def test_pvalues_probabilities_and_decisions(fitted, test_features):
    _, detector = fitted
    p = detector.score_pvalues(test_features)
    scores = -detector.score_samples(test_features)
    assert ((p > 0) & (p <= 1)).all()
    order = np.argsort(scores)
    assert (np.diff(p[order]) <= 0).all()  # more anomalous, less normal
    proba = detector.predict_proba(test_features)
    np.testing.assert_array_equal(detector.classes_, [-1, 1])
    np.testing.assert_allclose(proba[:, 1], p) and np.testing.assert_allclose(proba.sum(1), 1)
    for alpha in (0.05, 0.2):
        np.testing.assert_array_equal(detector.predict(test_features, alpha=alpha), np.where(p <= alpha, -1, 1))
        pixel_p = detector.pvalue_map(test_features)
        assert pixel_p.shape == detector.anomaly_map(test_features).shape
        np.testing.assert_array_equal(detector.predict_mask(test_features, alpha=alpha), pixel_p <= alpha)
    # A pixel's p-value is at least its image's smallest: masks imply flags
    # for the methods scoring images by their maps.
    assert (pixel_p.reshape(len(p), -1).min(1) >= 0).all()


def _fitted_state(detector):
    state = {}
    for key, value in vars(detector).items():
        if key.endswith("_") and key not in ("offset_", "pixel_threshold_") and not key.startswith("_"):
            state[key] = value.clone() if isinstance(value, torch.Tensor) else \
                value.copy() if isinstance(value, np.ndarray) else value
    return state


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
        return all(torch.equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.nn.Module):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    return a == b


@pytest.mark.parametrize("name", sorted(FAST_DETECTORS))
def test_set_threshold_decides_as_a_refit_and_touches_nothing_else(name, train_features, test_features):
    detector = FAST_DETECTORS[name]().fit(train_features)
    state = _fitted_state(detector)
    detector.set_threshold(contamination=0.2)
    refit = FAST_DETECTORS[name](contamination=0.2).fit(train_features)
    assert detector.contamination == 0.2
    assert (detector.offset_, detector.pixel_threshold_) == pytest.approx((refit.offset_, refit.pixel_threshold_))
    np.testing.assert_array_equal(detector.predict(test_features), refit.predict(test_features))
    np.testing.assert_array_equal(detector.predict_mask(test_features), refit.predict_mask(test_features))
    assert all(_same(value, getattr(detector, key)) for key, value in state.items())
    # A false-alarm rate: the images of p-value at most it, as a refit with
    # the corresponding contamination.
    detector.set_threshold(false_alarm_rate=0.1)
    np.testing.assert_array_equal(detector.predict(test_features), detector.predict(test_features, alpha=0.1))
    refit = FAST_DETECTORS[name](contamination=detector.contamination).fit(train_features)
    np.testing.assert_array_equal(detector.predict(test_features), refit.predict(test_features))
    # A score.
    detector.set_threshold(score=float(np.median(-detector.score_samples(test_features))))
    assert (detector.predict(test_features) == -1).sum() in (len(test_features) // 2, len(test_features) // 2 + 1)
    with pytest.raises(ValueError, match="exactly one"):
        detector.set_threshold(contamination=0.1, score=2.0)


def test_thresholds_travel_with_saved_and_exported_models(synthetic, tmp_path):
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
                         FAST_DETECTORS["padim"]()).fit(synthetic.train.images)
    save(pipe, tmp_path / "m.skcflow")
    loaded = load(tmp_path / "m.skcflow")
    np.testing.assert_array_equal(loaded[-1].training_scores_, pipe[-1].training_scores_)
    images = synthetic.test.images
    np.testing.assert_allclose(loaded.score_pvalues(images), pipe.score_pvalues(images))
    export_onnx(pipe, tmp_path / "m.onnx")
    runtime = OnnxDetector(tmp_path / "m.onnx")
    np.testing.assert_allclose(runtime.score_pvalues(images), pipe.score_pvalues(images))
    runtime.set_threshold(false_alarm_rate=0.1)
    pipe.set_threshold(false_alarm_rate=0.1)
    assert runtime.offset_ == pytest.approx(pipe[-1].offset_)
    np.testing.assert_array_equal(runtime.predict(images), pipe.predict(images))
    np.testing.assert_array_equal(runtime.predict_mask(images, alpha=0.1), pipe.predict_mask(images, alpha=0.1))


def test_score_with_a_false_alarm_rate_decides_as_a_refit(synthetic, tmp_path):
    from PIL import Image

    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
                         FAST_DETECTORS["padim"]()).fit(synthetic.train.images)
    save(pipe, tmp_path / "m.skcflow")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(synthetic.test.images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    for rate in (0.05, 0.3):
        out = tmp_path / f"scored{rate}"
        assert main(["score", str(tmp_path / "m.skcflow"), str(folder), "--out", str(out),
                     "--false-alarm-rate", str(rate)]) == 0
        labels = [r["label"] == "anomalous" for r in csv.DictReader(open(out / "scores.csv"))]
        contamination = contamination_for(pipe[-1].training_scores_, rate)
        refit = clone(pipe).set_params(padim__contamination=contamination).fit(synthetic.train.images)
        np.testing.assert_array_equal(labels, refit.predict(synthetic.test.images) == -1)
    # The model file itself is unchanged.
    np.testing.assert_array_equal(load(tmp_path / "m.skcflow")[-1].offset_, pipe[-1].offset_)
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "m.skcflow"), str(folder), "--out", str(out), "--false-alarm-rate", "2"])


def test_pasted_defects_change_exactly_their_masks():
    good = make_defects(n_train=8, n_test=1, image_size=64, random_state=0).train.images
    for images in (good, good[:, :48].astype(np.uint16) * 257, good[:, :, :40].astype(np.float32) / 255):
        pasted = paste_defects(images, random_state=1)
        assert pasted.images.dtype == images.dtype and pasted.images.shape == images.shape
        changed = (pasted.images != images).any(-1)
        np.testing.assert_array_equal(changed, pasted.masks.astype(bool))
        assert (pasted.masks.reshape(len(images), -1).sum(1) > 0).all()
        assert sorted(set(pasted.defect_type)) == ["blob", "crack", "scratch", "spot"]
    np.testing.assert_array_equal(paste_defects(good, random_state=1).images, paste_defects(good, random_state=1).images)


def test_pasted_defects_on_tiny_images_or_a_clear_error():
    rng = np.random.RandomState(0)
    for shape in [(2, 2), (1, 64), (5, 3)]:
        images = rng.randint(0, 256, (8, *shape, 3)).astype(np.uint8)
        pasted = paste_defects(images, random_state=0)
        np.testing.assert_array_equal((pasted.images != images).any(-1), pasted.masks.astype(bool))
        assert (pasted.masks.reshape(8, -1).sum(1) > 0).all()
    with pytest.raises(ValueError, match="1 x 1 pixels"):
        paste_defects(np.zeros((4, 1, 1, 3), np.uint8), random_state=0)


def test_pasted_defects_give_up_with_a_clear_error(monkeypatch):
    # A shape that keeps missing the image stops after a bounded number of draws.
    monkeypatch.setattr("skcflow.datasets._MASK_ATTEMPTS", 0)
    with pytest.raises(ValueError, match="could not draw a .* on images of 1 x 9 pixels"):
        paste_defects(np.zeros((1, 1, 9, 3), np.uint8), random_state=0)


def test_synthetic_split_selects_with_good_images_only(synthetic):
    X, y, cv = synthetic_split(synthetic.train.images, validation=6, random_state=0)
    assert len(X) == len(synthetic.train.images) + 6
    train, test = next(cv.split(X, y))
    assert not y[train].any() and y[test].reshape(12, -1).any(1).sum() == 6
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"), PaDiM(device="cpu", random_state=0))
    search = GridSearchCV(pipe, {"padim__n_features": [10, 100]}, cv=cv,
                          scoring={"aupro": get_scorer("aupro"), "image_auroc": get_scorer("image_auroc")},
                          refit="aupro").fit(X, y)
    assert search.best_params_["padim__n_features"] in (10, 100)
    assert 0 <= search.best_score_ <= 1
    with pytest.raises(ValueError, match="keep at least one"):
        synthetic_split(synthetic.train.images, validation=0)


def test_n_levels_is_chosen_on_synthetic_defects_as_cflowad_documents(synthetic):
    # The recipe of CFlowAD's n_levels docstring, on good images only.
    good = synthetic.train.images
    X, y, cv = synthetic_split(good, random_state=0)
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"), FAST_DETECTORS["cflow"]())
    search = GridSearchCV(pipe, {"cflowad__n_levels": [2, None]}, scoring=get_scorer("pixel_auroc"),
                          cv=cv).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_["cflowad__n_levels"] == [2, None][int(np.argmax(scores))]
    assert ((0.5 < scores) & (scores <= 1)).all()
    # Refitted on every good image, and on none of the defective copies.
    assert search.best_estimator_[-1].n_train_samples_ == len(good)


def test_compare_report_shows_scores_and_calibration(tmp_path):
    out = tmp_path / "report"
    assert main(["compare", "--out", str(out), "--image-size", "64", "--max-iter", "10", "--quiet",
                 "--models", "padim"]) == 0
    page = (out / "index.html").read_text()
    for picture in ("scores.png", "calibration.png"):
        assert picture in page and (out / picture).stat().st_size > 1000
