"""Model files: round trips, integrity, atomic saves, validation, provenance."""

import gzip
import json
import pickle

import joblib
import numpy as np
import pytest
import safetensors.torch
import torch
from sklearn.exceptions import NotFittedError

from skcflow import FeatureExtractor, PaDiM, load, make_pipeline, save
from skcflow.persistence import FORMAT_VERSION, _container, read_model_file

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


def test_files_are_safetensors_with_provenance(fitted_pipeline, tmp_path):
    path = tmp_path / "model.skcflow"
    save(fitted_pipeline, path)
    # Any safetensors reader can list the content; nothing in it is code.
    tensors = safetensors.torch.load_file(path)
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
    info = read_model_file(path)
    assert info.format_version == FORMAT_VERSION and len(info.sha256) == 64
    provenance = info.provenance
    assert provenance["torch"] == torch.__version__ and provenance["skcflow"]
    extractor = provenance["extractor"]
    assert extractor == fitted_pipeline[0].identity_
    assert {"backbone", "layers", "weights_sha256", "image_size", "bit_depth", "mean", "std"} <= set(extractor)


# ------------------------------------------------------------ integrity fuzz


def _small_model(synthetic):
    extractor = FeatureExtractor(image_size=32, device="cpu").fit()
    features = extractor.transform(synthetic.train.images[:8])
    return PaDiM(n_features=6, device="cpu", random_state=0).fit(features), extractor


def _variants(data, rng, header_end):
    """(description, bytes): one-bit flips in the header and the payload, and truncations."""
    header = sorted(rng.choice(header_end, size=min(header_end, 400), replace=False))
    payload = sorted(rng.choice(np.arange(header_end, len(data)), size=200, replace=False))
    for offset in [*header, *payload]:
        flipped = bytearray(data)
        flipped[offset] ^= 1 << int(rng.integers(8))
        yield f"bit flip at byte {offset}", bytes(flipped)
    for end in sorted(rng.choice(len(data), size=40, replace=False)):
        yield f"truncated to {end} bytes", data[:end]


def test_flipped_bits_and_truncations_are_refused_or_identical(synthetic, tmp_path):
    model, extractor = _small_model(synthetic)
    features = extractor.transform(synthetic.test.images)
    expected = model.score_samples(features)
    path = tmp_path / "model.skcflow"
    save(model, path)
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    counts = {"clear error": 0, "identical": 0}
    rng = np.random.default_rng(0)
    for what, variant in _variants(data, rng, header_end):
        damaged = tmp_path / "damaged.skcflow"
        damaged.write_bytes(variant)
        try:
            loaded = load(damaged)
        except ValueError as exc:
            message = str(exc)
            assert str(damaged) in message and "\n" not in message, (what, message)
            assert "run code" not in message
            counts["clear error"] += 1
            continue
        np.testing.assert_array_equal(loaded.score_samples(features), expected, err_msg=what)
        counts["identical"] += 1
    assert sum(counts.values()) == 640 and counts["clear error"] >= 600


def test_a_failed_save_leaves_the_old_model_intact(fitted_pipeline, synthetic, tmp_path, monkeypatch):
    path = tmp_path / "model.skcflow"
    save(fitted_pipeline, path)
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match=r"could not write the model to .*model\.skcflow.*No space left.*unchanged"):
        save(fitted_pipeline, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.skcflow"]  # no temporary file left
    monkeypatch.undo()
    np.testing.assert_array_equal(load(path).score_samples(synthetic.test.images),
                                  fitted_pipeline.score_samples(synthetic.test.images))


def test_bad_destinations_are_named_before_any_work(fitted_pipeline, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        save(fitted_pipeline, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save(fitted_pipeline, tmp_path / "missing" / "model.skcflow")
    with pytest.raises(NotFittedError, match="not fitted: fit it before saving"):
        save(PaDiM(), tmp_path / "unfitted.skcflow")
    with pytest.raises(NotFittedError, match="FeatureExtractor is not fitted"):
        save(make_pipeline(FeatureExtractor(), PaDiM()), tmp_path / "unfitted.skcflow")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------ files that are not models


def test_files_that_are_not_models_say_what_they_are(fitted_pipeline, tmp_path):
    model = tmp_path / "model.skcflow"
    save(fitted_pipeline, model)
    cases = {
        "page.skcflow": (b"<!DOCTYPE html><html><body>Download</body></html>", "HTML page"),
        "pointer.skcflow": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n",
                            "git-lfs pointer"),
        "packed.skcflow": (gzip.compress(model.read_bytes()), "gzip-compressed"),
        "notes.skcflow": (b"threshold = 0.5\n", "text file"),
        "empty.skcflow": (b"", "empty"),
        "binary.skcflow": (bytes(range(256)) * 4, "not a skcflow model"),
        "pickle.skcflow": (pickle.dumps({"a": 1}), "pickle file"),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save(torch.zeros(3), tmp_path / "tensor.skcflow")
    cases["tensor.skcflow"] = (None, "PyTorch file")
    joblib.dump(PaDiM(), tmp_path / "model.joblib")
    cases["model.joblib"] = (None, "pickle file")
    # A file of skcflow's previous format (a torch archive without a digest).
    torch.save({"header": json.dumps({"format": "skcflow-model", "format_version": 2}),
                "tensors": {}}, tmp_path / "old.skcflow")
    cases["old.skcflow"] = (None, "older skcflow.*fit and save the model again")
    safetensors.torch.save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    cases["other.safetensors"] = (None, "not one written by skcflow.save")
    for name, (_, message) in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            load(tmp_path / name)
        text = str(error.value)
        assert str(tmp_path / name) in text and "\n" not in text and "run code" not in text
    with pytest.raises(FileNotFoundError, match="nowhere.skcflow"):
        load(tmp_path / "nowhere.skcflow")


# ------------------------------------------------------------ malformed headers


def _rewrite(path, edit_header=None, edit_tensors=None):
    """Write a variant of a model file with a valid digest, as a crafted file would have."""
    document, tensors, _ = _container.read(path)
    header = json.loads(document)
    if edit_header:
        edit_header(header)
    if edit_tensors:
        edit_tensors(tensors)
    target = path.with_name("crafted.skcflow")
    _container.write(target, json.dumps(header), tensors)
    return target


def _detector(header):
    return header["model"]["steps"][1][1]


def _set(path, value):
    def edit(header):
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


HEADER_CASES = {
    "string for a number": (lambda h: _detector(h)["params"].update(n_features="many"),
                            "params are invalid.*n_features"),
    "negative size": (lambda h: _detector(h)["fitted"].update(n_train_samples_=-4),
                      "fitted.n_train_samples_ must be an int >= 1"),
    "list for a mapping": (lambda h: _detector(h).update(params=[1, 2]), "params must be a mapping"),
    "unknown parameter": (lambda h: _detector(h)["params"].update(gamma=1), r"\['gamma'\] unknown"),
    "missing fitted attribute": (lambda h: _detector(h)["fitted"].pop("offset_"),
                                 r"\['offset_'\] missing"),
    "NaN in JSON": (lambda h: _detector(h)["fitted"].update(offset_="NaN"), "offset_ must be a finite"),
    "unknown class": (lambda h: _detector(h).update({"class": "os.system"}), "unknown model class"),
    "bad step": (lambda h: h["model"]["steps"].append("rm -rf"), "steps"),
    "version as text": (_set(["format_version"], "4"), "format_version must be an int"),
    "newer version": (_set(["format_version"], FORMAT_VERSION + 1), "upgrade skcflow"),
    "older version": (_set(["format_version"], FORMAT_VERSION - 1), "fit and save the model again"),
    "no provenance": (_set(["provenance"], None), "provenance must be a mapping"),
    "not skcflow": (_set(["format"], "other"), "does not describe a skcflow model"),
    "strange tag": (lambda h: _detector(h)["fitted"].update(frame_size_={"eval": "1"}),
                    "does not write"),
    "inconsistent size": (lambda h: _detector(h)["fitted"].update(model_size_bytes_=12),
                          "model_size_bytes_ is 12"),
    "other image size": (lambda h: h["model"]["steps"][0][1]["params"].update(image_size=96),
                         "inconsistent"),
}


TENSOR_CASES = {
    "wrong shape": (lambda t: t.update({"padim.mean_": t["padim.mean_"][:-1]}), "shape"),
    "wrong dtype": (lambda t: t.update({"padim.precision_": t["padim.precision_"].double()}),
                    "float32 tensor"),
    "NaN values": (lambda t: t["padim.mean_"].view(-1).__setitem__(3, float("nan")), "NaN"),
    "missing tensor": (lambda t: t.pop("padim.mean_"), "missing"),
    "extra tensor": (lambda t: t.update({"padim.payload": torch.zeros(3)}), "unexpected"),
    "channels out of range": (lambda t: t["padim.channels_"].__setitem__(0, -1), "channel indices"),
    "encoder not its identity": (
        lambda t: t["featureextractor.encoder_.stem.0.weight"].mul_(2), "identity_ does not describe"),
}


CASES = {**{("header", k): v for k, v in HEADER_CASES.items()},
         **{("tensors", k): v for k, v in TENSOR_CASES.items()}}


@pytest.fixture(scope="module")
def small_pipeline(synthetic):
    return make_pipeline(FeatureExtractor(image_size=32, device="cpu"),
                         PaDiM(n_features=6, device="cpu", random_state=0)).fit(synthetic.train.images[:6])


@pytest.mark.parametrize("kind, case", sorted(CASES))
def test_malformed_files_name_the_file_and_the_field(small_pipeline, tmp_path, kind, case):
    save(small_pipeline, tmp_path / "model.skcflow")
    edit, message = CASES[kind, case]
    crafted = _rewrite(tmp_path / "model.skcflow", **{f"edit_{kind}": edit})
    with pytest.raises(ValueError, match=message) as error:
        load(crafted)
    assert str(crafted) in str(error.value) and "\n" not in str(error.value)


def test_cflow_flows_are_checked(train_features, tmp_path):
    model = FAST_DETECTORS["cflow"]().fit(train_features)
    save(model, tmp_path / "cflow.skcflow")

    def scramble(tensors):
        tensors["flows_.0.perms"][0, :2] = 0
    with pytest.raises(ValueError, match="permutations"):
        load(_rewrite(tmp_path / "cflow.skcflow", edit_tensors=scramble))
    with pytest.raises(ValueError, match="levels_"):
        load(_rewrite(tmp_path / "cflow.skcflow", edit_header=lambda h: h["model"]["params"].update(n_levels=1)))
    other = "float32" if model.training_dtype_ == "bfloat16" else "bfloat16"
    with pytest.raises(ValueError, match="training_dtype_"):
        load(_rewrite(tmp_path / "cflow.skcflow",
                      edit_header=lambda h: h["model"]["params"].update(training_dtype=other)))
    with pytest.raises(ValueError, match="training_dtype_ must be one of"):
        load(_rewrite(tmp_path / "cflow.skcflow",
                      edit_header=lambda h: h["model"]["fitted"].update(training_dtype_="float16")))


def test_unsaveable_parameters_are_named(train_features, tmp_path):
    model = PaDiM(n_features=20, device="cpu", random_state=np.random.RandomState(0))
    model.fit(train_features)
    with pytest.raises(TypeError, match="random_state"):
        save(model, tmp_path / "x.skcflow")
