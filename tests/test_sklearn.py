"""scikit-learn, exactly: its checks, the fit contract, and model selection on Features."""

import pickle
import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import (GridSearchCV, KFold, cross_val_score, cross_validate,
                                     learning_curve, validation_curve)
from sklearn.utils import _safe_indexing, check_consistent_length, get_tags, indexable
from sklearn.utils import estimator_checks as checks

from skcflow import SPADE, CFlowAD, FeatureExtractor, Features, PaDiM, load_mvtec
from skcflow.metrics import get_scorer

from conftest import real_data

DETECTORS = {
    "CFlowAD": lambda: CFlowAD(max_iter=5, fiber_batch_size=64, condition_dim=8, n_coupling_layers=2,
                               device="cpu", random_state=0),
    "PaDiM": lambda: PaDiM(n_features=10, device="cpu", random_state=0),
    "SPADE": lambda: SPADE(device="cpu"),
}
ESTIMATORS = {**DETECTORS, "FeatureExtractor": lambda: FeatureExtractor(image_size=32, device="cpu")}

# scikit-learn's checks that apply to estimators of image features: those
# that feed no 2-D array of their own, or only ones that fit must refuse
# before it reads them (parameter validation, unfitted estimators).
SKLEARN_CHECKS = [
    "check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types",
    "check_estimator_repr", "check_no_attributes_set_in_init", "check_parameters_default_constructible",
    "check_get_params_invariance", "check_set_params", "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order", "check_estimators_unfitted", "check_param_validation",
]
DETECTOR_CHECKS = ["check_outlier_contamination"]


@pytest.fixture(scope="module")
def tiny(synthetic):
    """A tiny Features set and its images: 10 images of 32 px."""
    images = synthetic.train.images[:10, :32, :32]
    return FeatureExtractor(image_size=32, device="cpu").fit(images).transform(images), images


@pytest.mark.parametrize("check", SKLEARN_CHECKS + DETECTOR_CHECKS)
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_scikit_learn_checks(name, check):
    if check in DETECTOR_CHECKS and name not in DETECTORS:
        pytest.skip("a detectors' check")
    if not hasattr(checks, check):
        pytest.skip(f"scikit-learn {sklearn.__version__} has no {check}")
    estimator = ESTIMATORS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        getattr(checks, check)(name, estimator)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_tags_are_honest(name):
    tags = get_tags(ESTIMATORS[name]())
    assert tags.requires_fit and not tags.input_tags.two_d_array and not tags.input_tags.sparse
    assert tags.non_deterministic is False  # on the CPU
    if name in DETECTORS:
        assert tags.estimator_type == "outlier_detector"
    else:
        assert tags.transformer_tags is not None
    assert get_tags(ESTIMATORS[name]().set_params(device="cuda")).non_deterministic


def _fit(name, tiny):
    features, images = tiny
    return ESTIMATORS[name]().fit(images if name == "FeatureExtractor" else features)


def _outputs(estimator, tiny):
    features, images = tiny
    if isinstance(estimator, FeatureExtractor):
        return [m.numpy() for m in estimator.transform(images).maps]
    return [estimator.score_samples(features), estimator.anomaly_map(features), estimator.predict(features)]


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_the_fit_contract(name, tiny):
    features, images = tiny
    estimator = ESTIMATORS[name]()
    # Not fitted: every method after fit says so.
    methods = (["transform"] if name == "FeatureExtractor" else
               ["score_samples", "decision_function", "predict", "anomaly_map", "predict_mask"])
    for method in methods:
        with pytest.raises(NotFittedError):
            getattr(estimator, method)(images if name == "FeatureExtractor" else features)
    before = [m.clone() for m in features.maps], images.copy()
    fitted = estimator.fit(images if name == "FeatureExtractor" else features)
    assert fitted is estimator  # fit returns self
    # fit does not change its input.
    assert all(torch.equal(a, b) for a, b in zip(before[0], features.maps))
    np.testing.assert_array_equal(before[1], images)
    # Fitted attributes end in "_"; the input's description is kept.
    new = set(vars(estimator)) - set(estimator.get_params())
    assert new and all(k.endswith("_") or k.startswith("_") for k in new)
    if name == "FeatureExtractor":
        assert estimator.feature_dims_ == [d for d, _, _ in features.shapes]
    else:  # feature_shapes_ is the equivalent of n_features_in_ for Features
        assert estimator.feature_shapes_ == features.shapes
    outputs = _outputs(estimator, tiny)
    # Idempotent: fitting again gives the same model.
    estimator.fit(images if name == "FeatureExtractor" else features)
    for a, b in zip(outputs, _outputs(estimator, tiny)):
        np.testing.assert_array_equal(a, b)
    # The same random_state, a clone: the same model (FeatureExtractor: the same weights).
    again = clone(estimator).fit(images if name == "FeatureExtractor" else features)
    for a, b in zip(outputs, _outputs(again, tiny)):
        np.testing.assert_array_equal(a, b)
    # Pickling round-trips a fitted model.
    for a, b in zip(outputs, _outputs(pickle.loads(pickle.dumps(estimator)), tiny)):
        np.testing.assert_array_equal(a, b)
    # get_params / set_params round trip, and clone drops the fit.
    params = estimator.get_params()
    assert clone(estimator).set_params(**params).get_params() == params
    assert not hasattr(clone(estimator), "device_")


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_fit_predict_gives_the_leave_one_out_decisions(name, synthetic, extractor):
    features = extractor.transform(synthetic.train.images)
    detector = DETECTORS[name]().set_params(contamination=0.1)
    labels = detector.fit_predict(features)
    # As many as offset_ was set to flag, where in-sample predictions call
    # (nearly) every training image normal.
    np.testing.assert_array_equal(labels, np.where(-detector.training_scores_ - detector.offset_ >= 0, 1, -1))
    assert 1 <= (labels == -1).sum() <= 0.1 * len(labels) + 1
    if name != "CFlowAD":
        assert (detector.predict(features) == 1).all()
    # With labels, the anomalies left out of the fit get predict's labels.
    mixed = extractor.transform(np.concatenate([synthetic.train.images, synthetic.test.images]))
    y = np.concatenate([np.zeros(len(synthetic.train.images)), synthetic.test.target])
    labels = DETECTORS[name]().fit_predict(mixed, y)
    anomalous = np.flatnonzero(y == 1)
    np.testing.assert_array_equal(labels[anomalous], DETECTORS[name]().fit(mixed, y).predict(mixed[anomalous]))


def test_features_index_and_split_as_scikit_learn_does(tiny):
    features, _ = tiny
    picked = _safe_indexing(features, [3, 1])
    assert isinstance(picked, Features) and len(picked) == 2
    assert torch.equal(picked.maps[0][0], features.maps[0][3])
    assert isinstance(_safe_indexing(features, np.array([True] * 5 + [False] * 5)), Features)
    check_consistent_length(features, np.zeros(10))
    with pytest.raises(ValueError):
        check_consistent_length(features, np.zeros(9))
    X, y = indexable(features, np.zeros(10))
    assert X is features
    assert [len(f) for f in features] == [1] * 10


@pytest.fixture(scope="module")
def bottle_features():
    """Bottle's good training images and its test split, encoded once at 64 px."""
    root = real_data("mvtec_ad")
    train = load_mvtec(root, "bottle", "train", image_size=64)
    test = load_mvtec(root, "bottle", "test", image_size=64)
    extractor = FeatureExtractor(image_size=64, device="cpu").fit(train.images)
    features = extractor.transform(np.concatenate([train.images[:60], test.images]))
    masks = np.concatenate([np.zeros((60, 64, 64), np.uint8), test.masks])
    return features, masks


def test_model_selection_on_pre_extracted_features(bottle_features):
    features, masks = bottle_features
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    cv = KFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(PaDiM(device="cpu", random_state=0), {"n_features": [20, 60]},
                          scoring=get_scorer("image_auroc"), cv=cv).fit(features, labels)
    assert search.best_params_["n_features"] in (20, 60) and search.best_score_ > 0.8
    scorers = {name: get_scorer(name) for name in ("image_auroc", "pixel_auroc", "aupro")}
    results = cross_validate(PaDiM(n_features=40, device="cpu", random_state=0), features, masks,
                             scoring=scorers, cv=cv)
    assert all((results[f"test_{name}"] > 0.7).all() for name in scorers)
    assert len(cross_val_score(SPADE(device="cpu"), features, labels, cv=cv,
                               scoring=get_scorer("image_auroc"))) == 2
    sizes, _, scores = learning_curve(PaDiM(n_features=40, device="cpu", random_state=0), features, labels,
                                      train_sizes=[0.5, 1.0], cv=cv, scoring=get_scorer("image_auroc"))
    assert len(sizes) == 2 and np.isfinite(scores).all()
    _, scores = validation_curve(PaDiM(device="cpu", random_state=0), features, labels,
                                 param_name="sigma", param_range=[2.0, 4.0], cv=cv,
                                 scoring=get_scorer("image_auroc"))
    assert scores.shape == (2, 2) and np.isfinite(scores).all()


def test_supported_scikit_learn_range():
    from importlib.metadata import requires

    requirement = next(r for r in requires("skcflow") if r.startswith("scikit-learn"))
    assert ">=1.6" in requirement and "<1.10" in requirement
    assert (1, 6) <= tuple(int(v) for v in sklearn.__version__.split(".")[:2]) < (1, 10)
