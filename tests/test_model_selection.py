import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, cross_validate

from skcflow import CFlowAD, FeatureExtractor, load_mvtec, make_pipeline
from skcflow.metrics import get_scorer
from skcflow.model_selection import predefined_split

from conftest import real_data

SCORING = {name: get_scorer(name) for name in ("image_auroc", "pixel_auroc", "aupro")}
SMALL = dict(max_iter=15, fiber_batch_size=256, condition_dim=32, device="cpu", random_state=0)


def test_predefined_split_trains_on_train_and_tests_on_test(synthetic):
    X, y, cv = predefined_split(synthetic.train, synthetic.test)
    (train_idx, test_idx), = list(cv.split(X, y))
    n_train = len(synthetic.train.images)
    np.testing.assert_array_equal(train_idx, np.arange(n_train))
    np.testing.assert_array_equal(test_idx, np.arange(n_train, len(X)))
    assert not y[train_idx].any()


def test_predefined_split_rejects_mixed_sizes(synthetic):
    from skcflow import make_defects
    other = make_defects(n_train=2, n_test=2, image_size=32, random_state=0)
    with pytest.raises(ValueError, match="same image_size"):
        predefined_split(synthetic.train, other.test)


@pytest.fixture(scope="module")
def bottle_subset():
    root = real_data("mvtec_ad")
    train = load_mvtec(root, "bottle", split="train", image_size=64)
    test = load_mvtec(root, "bottle", split="test", image_size=64)
    keep = np.r_[np.flatnonzero(test.target == 0)[:8], np.flatnonzero(test.target == 1)[::5]]
    train.images, train.masks = train.images[:16], train.masks[:16]
    test.images, test.masks = test.images[keep], test.masks[keep]
    return predefined_split(train, test)


def test_grid_search_over_coupling_layers_on_bottle(bottle_subset, tmp_path):
    X, y, cv = bottle_subset
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"), CFlowAD(**SMALL),
                         memory=str(tmp_path))
    search = GridSearchCV(pipe, {"cflowad__n_coupling_layers": [4, 8]}, scoring=SCORING,
                          refit="image_auroc", cv=cv)
    search.fit(X, y)
    results = pd.DataFrame(search.cv_results_)
    assert list(results["param_cflowad__n_coupling_layers"]) == [4, 8]
    for name in SCORING:
        assert results[f"mean_test_{name}"].between(0, 1).all()
    assert results["mean_test_image_auroc"].max() > 0.6
    assert search.best_estimator_.anomaly_map(X[-2:]).shape == (2, 64, 64)


def test_pipeline_memory_extracts_features_once_per_setting(bottle_subset, tmp_path, monkeypatch):
    X, y, cv = bottle_subset
    calls = []
    original = FeatureExtractor.transform

    def counting(self, X):
        calls.append(len(X))
        return original(self, X)

    monkeypatch.setattr(FeatureExtractor, "transform", counting)
    # n_levels=2: no synthetic defects to encode at each fit (with them,
    # see test_cflow's memory test).
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"), CFlowAD(**SMALL, n_levels=2),
                         memory=str(tmp_path))
    GridSearchCV(pipe, {"cflowad__n_coupling_layers": [2, 4, 6]},
                 scoring=SCORING["image_auroc"], cv=cv, refit=False).fit(X, y)
    n_train = int((cv.test_fold == -1).sum())
    # One extraction of the training fold for three settings; the test fold
    # is transformed at scoring time for each.
    assert calls.count(n_train) == 1
    assert len(calls) == 1 + 3


def test_cross_validate_with_three_scorers(bottle_subset):
    X, y, cv = bottle_subset
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"), CFlowAD(**SMALL))
    scores = cross_validate(pipe, X, y, cv=cv, scoring=SCORING)
    for name in SCORING:
        assert 0 <= scores[f"test_{name}"][0] <= 1
