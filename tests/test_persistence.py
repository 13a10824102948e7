import json
import pickle
import zipfile

import joblib
import numpy as np
import pytest
import torch

from skcflow import PaDiM, load, save
from skcflow.persistence import FORMAT_VERSION

from conftest import FAST_DETECTORS


def test_round_trip_is_bit_identical(fitted_pipeline, synthetic, tmp_path):
    path = tmp_path / "model.skcflow"
    save(fitted_pipeline, path)
    loaded = load(path)
    images = synthetic.test.images
    np.testing.assert_array_equal(loaded.score_samples(images), fitted_pipeline.score_samples(images))
    np.testing.assert_array_equal(loaded.anomaly_map(images), fitted_pipeline.anomaly_map(images))
    np.testing.assert_array_equal(loaded.predict_mask(images), fitted_pipeline.predict_mask(images))
    detector = loaded[-1]
    assert detector.get_params() == fitted_pipeline[-1].get_params()
    assert detector.offset_ == fitted_pipeline[-1].offset_
    assert detector.device_ == torch.device("cpu")


@pytest.mark.parametrize("whiten", [True, False])
def test_detector_alone_round_trips(train_features, test_features, tmp_path, whiten):
    model = FAST_DETECTORS["cflow"](whiten=whiten).fit(train_features)
    save(model, tmp_path / "cflow.skcflow")
    loaded = load(tmp_path / "cflow.skcflow")
    assert loaded.feature_shapes_ == model.feature_shapes_
    assert loaded.levels_ == model.levels_
    for ours, theirs in zip(loaded.log_prob_max_, model.log_prob_max_):
        assert torch.equal(ours, theirs)
    np.testing.assert_array_equal(loaded.anomaly_map(test_features), model.anomaly_map(test_features))


@pytest.mark.parametrize("version, message", [(FORMAT_VERSION + 1, "upgrade skcflow"),
                                              (FORMAT_VERSION - 1, "fit and save the model again")])
def test_other_format_versions_are_refused(fitted_pipeline, tmp_path, version, message):
    path = tmp_path / "model.skcflow"
    save(fitted_pipeline, path)
    content = torch.load(path, weights_only=True)
    header = json.loads(content["header"])
    header["format_version"] = version
    content["header"] = json.dumps(header)
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        load(path)


def test_pickled_objects_are_refused(tmp_path, train_features):
    # A torch file whose content is a pickled estimator would run code in a
    # plain torch.load; load refuses it.
    path = tmp_path / "evil.skcflow"
    torch.save({"header": PaDiM(device="cpu"), "tensors": {}}, path)
    with pytest.raises(ValueError, match="run code"):
        load(path)
    joblib.dump(PaDiM(), tmp_path / "model.joblib")
    with pytest.raises(ValueError, match="skcflow"):
        load(tmp_path / "model.joblib")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError):
        load(tmp_path / "plain.pkl")


def test_truncated_and_tampered_files(fitted_pipeline, tmp_path):
    path = tmp_path / "model.skcflow"
    save(fitted_pipeline, path)
    data = path.read_bytes()
    (tmp_path / "cut.skcflow").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.skcflow"):
        load(tmp_path / "cut.skcflow")
    # Rewrite the JSON header to name a class skcflow does not know.
    content = torch.load(path, weights_only=True)
    content["header"] = content["header"].replace('"AnomalyPipeline"', '"os.system"')
    torch.save(content, tmp_path / "tampered.skcflow")
    with pytest.raises(ValueError, match="unknown model class"):
        load(tmp_path / "tampered.skcflow")
    with pytest.raises(FileNotFoundError, match="nowhere.skcflow"):
        load(tmp_path / "nowhere.skcflow")
    assert zipfile.is_zipfile(path)


def test_unsaveable_parameters_are_named(train_features, tmp_path):
    model = PaDiM(n_features=20, device="cpu", random_state=np.random.RandomState(0))
    model.fit(train_features)
    with pytest.raises(TypeError, match="random_state"):
        save(model, tmp_path / "x.skcflow")
