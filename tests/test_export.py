"""ONNX export and the torch-free runtime: the exported model answers as skcflow does."""

import copy
import csv
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from skcflow import FeatureExtractor, PaDiM, export_onnx, load_mvtec, make_pipeline, save
from skcflow.cli import main
from skcflow.runtime import OnnxDetector

from conftest import FAST_DETECTORS, real_data


@pytest.fixture(scope="module", params=["cflow", "padim"])
def exported(request, synthetic, tmp_path_factory):
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
                         FAST_DETECTORS[request.param]()).fit(synthetic.train.images)
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    report = export_onnx(pipe, path)
    return pipe, path, report


def _assert_parity(pipe, runtime, images):
    maps, expected = runtime.anomaly_map(images), pipe.anomaly_map(images)
    scale = expected.max() - expected.min()
    assert np.abs(maps - expected).max() <= 1e-4 * scale
    scores, expected_scores = runtime.score_samples(images), pipe.score_samples(images)
    np.testing.assert_array_equal(np.argsort(scores, kind="stable"), np.argsort(expected_scores, kind="stable"))
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(runtime.decision_function(images), pipe.decision_function(images),
                               rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(runtime.predict(images), pipe.predict(images))
    agreement = (runtime.predict_mask(images) == pipe.predict_mask(images)).mean()
    assert agreement >= 0.9999
    return agreement


def test_exported_model_answers_as_skcflow(exported, synthetic):
    pipe, path, report = exported
    runtime = OnnxDetector(path)
    assert report.map_difference <= 1e-4 and report.size_bytes == path.stat().st_size
    assert (runtime.offset_, runtime.pixel_threshold_) == (pipe[-1].offset_, pipe[-1].pixel_threshold_)
    assert runtime.frame_size_ == (64, 64) and runtime.bit_depth_ == 8
    _assert_parity(pipe, runtime, synthetic.test.images)
    # Thresholds move as the detector's do (CFlowAD's pixel threshold is not
    # its image threshold: its image score is not the map's maximum).
    detector = copy.deepcopy(pipe[-1]).set_threshold(contamination=0.2)
    runtime.set_threshold(contamination=0.2)
    assert (runtime.offset_, runtime.pixel_threshold_) == (detector.offset_, detector.pixel_threshold_)
    assert (detector.pixel_threshold_ == -detector.offset_) == (type(detector).__name__ == "PaDiM")


def test_graph_contract_and_metadata(exported):
    pipe, path, _ = exported
    model = onnx.load(path)
    (images,) = model.graph.input
    assert images.name == "images"
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = images.type.tensor_type.shape.dim
    assert not dims[0].dim_value and [d.dim_value for d in dims[1:]] == [64, 64, 3]
    assert [o.name for o in model.graph.output] == ["anomaly_map", "anomaly_score"]
    metadata = json.loads({p.key: p.value for p in model.metadata_props}["skcflow"])
    assert metadata["method"] == type(pipe[-1]).__name__
    assert metadata["offset"] == pipe[-1].offset_ and metadata["pixel_threshold"] == pipe[-1].pixel_threshold_
    assert metadata["frame_size"] == [64, 64] and metadata["bit_depth"] == 8
    assert metadata["provenance"]["extractor"] == pipe[0].identity_


def test_one_image_alone_or_in_a_batch(exported, synthetic):
    _, path, _ = exported
    runtime = OnnxDetector(path, batch_size=64)
    images = synthetic.test.images
    together = runtime.anomaly_map(images)
    for i in (0, 5, len(images) - 1):
        assert np.abs(runtime.anomaly_map(images[i : i + 1])[0] - together[i]).max() <= 1e-5


def test_runtime_scores_without_torch(exported, synthetic, tmp_path):
    pipe, path, _ = exported
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(synthetic.test.images[:4]):
        Image.fromarray(image).resize((80, 72)).save(folder / f"{i}.png")
    np.save(tmp_path / "images.npy", synthetic.test.images)
    script = f"""
import sys

class Forbidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "sklearn", "scipy", "pandas", "matplotlib"):
            raise ImportError(name + " must not be imported by the runtime")

sys.meta_path.insert(0, Forbidden())
import numpy as np
from skcflow.runtime import OnnxDetector
from skcflow.cli import main

detector = OnnxDetector({str(path)!r})
images = np.load({str(tmp_path / "images.npy")!r})
np.save({str(tmp_path / "maps.npy")!r}, detector.anomaly_map(images))
np.save({str(tmp_path / "labels.npy")!r}, detector.predict(images))
assert main(["score", {str(path)!r}, {str(folder)!r}, "--out", {str(tmp_path / "scored")!r}]) == 0
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "sklearn", "scipy")]
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    maps, expected = np.load(tmp_path / "maps.npy"), pipe.anomaly_map(synthetic.test.images)
    assert np.abs(maps - expected).max() <= 1e-4 * (expected.max() - expected.min())
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), pipe.predict(synthetic.test.images))
    # The same files scored through skcflow's model file give the same table.
    model = tmp_path / "model.skcflow"
    save(pipe, model)
    assert main(["score", str(model), str(folder), "--out", str(tmp_path / "scored_torch")]) == 0
    rows = [list(csv.DictReader(open(tmp_path / d / "scores.csv"))) for d in ("scored", "scored_torch")]
    assert [r["label"] for r in rows[0]] == [r["label"] for r in rows[1]]
    np.testing.assert_allclose([float(r["score"]) for r in rows[0]], [float(r["score"]) for r in rows[1]],
                               rtol=1e-4)
    assert Image.open(tmp_path / "scored" / "masks" / "0000_0_mask.png").size == (80, 72)


def test_export_command(exported, synthetic, tmp_path, capsys):
    pipe, _, _ = exported
    model = tmp_path / "model.skcflow"
    save(pipe, model)
    assert main(["export", str(model), str(tmp_path / "model.onnx")]) == 0
    assert "onnxruntime reproduces skcflow's maps" in capsys.readouterr().out
    _assert_parity(pipe, OnnxDetector(tmp_path / "model.onnx"), synthetic.test.images[:4])


def test_what_is_not_exported_says_why(synthetic, train_features, tmp_path):
    spade = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
                          FAST_DETECTORS["spade"]()).fit(synthetic.train.images)
    with pytest.raises(ValueError, match="SPADE is not exported: its model is its whole training gallery"):
        export_onnx(spade, tmp_path / "spade.onnx")
    half = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
                         FAST_DETECTORS["cflow"](inference_dtype="bfloat16")).fit(synthetic.train.images)
    with pytest.raises(ValueError, match="set_params.inference_dtype='float32'"):
        export_onnx(half, tmp_path / "half.onnx")
    half_encoder = make_pipeline(FeatureExtractor(image_size=64, device="cpu", inference_dtype="bfloat16"),
                                 FAST_DETECTORS["padim"]()).fit(synthetic.train.images)
    with pytest.raises(ValueError, match="FeatureExtractor encodes in bfloat16"):
        export_onnx(half_encoder, tmp_path / "half_encoder.onnx")
    half_encoder[0].set_params(inference_dtype="float32").fit()
    export_onnx(half_encoder, tmp_path / "exact.onnx")
    (tmp_path / "exact.onnx").unlink()
    with pytest.raises(TypeError, match="pipeline of a FeatureExtractor and a detector"):
        export_onnx(PaDiM(n_features=10, device="cpu").fit(train_features), tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_runtime_refuses_what_the_graph_cannot_take(exported, tmp_path):
    _, path, _ = exported
    runtime = OnnxDetector(path)
    for bad, message in [(np.zeros((2, 48, 64, 3), np.uint8), "frame, 64x64"),
                         (np.zeros((2, 64, 64, 3), np.uint16), "takes uint8 images"),
                         (np.zeros((2, 64, 64, 3), np.float32), "takes uint8 images"),
                         (np.zeros((2, 64, 64), np.uint8), "shape")]:
        with pytest.raises(ValueError, match=message):
            runtime.anomaly_map(bad)
    other = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(other, tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not one exported by this skcflow"):
        OnnxDetector(tmp_path / "other.onnx")
    (tmp_path / "text.onnx").write_text("hello")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        OnnxDetector(tmp_path / "text.onnx")
    # An export of an older format, whose scores the runtime would threshold wrongly.
    model = onnx.load(path)
    for prop in model.metadata_props:
        if prop.key == "skcflow":
            metadata = json.loads(prop.value)
            del metadata["maps_score_images"]
            prop.value = json.dumps({**metadata, "format_version": 1})
    onnx.save(model, tmp_path / "old.onnx")
    with pytest.raises(ValueError, match="format version 2.*export the pipeline again"):
        OnnxDetector(tmp_path / "old.onnx")


def test_sixteen_bit_letterboxed_models_export(synthetic, tmp_path):
    deep = synthetic.train.images.astype(np.uint16) * 16
    pipe = make_pipeline(FeatureExtractor(image_size=(48, 64), keep_aspect=True, bit_depth=12, device="cpu"),
                         FAST_DETECTORS["padim"]()).fit(deep)
    export_onnx(pipe, tmp_path / "deep.onnx")
    runtime = OnnxDetector(tmp_path / "deep.onnx")
    assert runtime.bit_depth_ == 12 and runtime.keep_aspect_ and runtime.frame_size_ == (48, 64)
    folder = tmp_path / "files"
    folder.mkdir()
    for i, image in enumerate(synthetic.test.images[:3].astype(np.uint16) * 16):
        Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
    images, _, sizes = runtime.read_images(folder)
    assert images.dtype == np.uint16 and images.shape == (3, 48, 64, 3) and sizes == [(64, 64)] * 3
    _assert_parity(pipe, runtime, images)
    with pytest.raises(ValueError, match="reach"):
        runtime.anomaly_map(np.full((1, 48, 64, 3), 5000, np.uint16))


@pytest.mark.parametrize("name", ["cflow", "padim"])
def test_parity_on_real_bottles(name, tmp_path):
    root = real_data("mvtec_ad")
    train = load_mvtec(root, "bottle", "train", image_size=64)
    test = load_mvtec(root, "bottle", "test", image_size=64)
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
                         FAST_DETECTORS[name]()).fit(train.images[:60])
    export_onnx(pipe, tmp_path / "bottle.onnx", check_images=test.images[:8])
    assert _assert_parity(pipe, OnnxDetector(tmp_path / "bottle.onnx"), test.images) >= 0.9999
