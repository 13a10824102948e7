"""Streaming fits, incremental updates, and many categories at once on joblib and Dask."""

import csv

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skcflow import CFlowAD, FeatureExtractor, PaDiM, load, load_mvtec, make_defects, make_pipeline, save
from skcflow.cli import main
from skcflow.metrics import image_auroc, pixel_auroc
from skcflow.streaming import FeatureStream

from conftest import FAST_DETECTORS, real_data


@pytest.fixture(scope="module")
def batches(synthetic):
    images = synthetic.train.images
    return [images[i : i + 7] for i in range(0, len(images), 7)]


@pytest.fixture(scope="module")
def stream(extractor, batches):
    return FeatureStream(extractor, batches)


def test_streaming_padim_and_spade_equal_the_in_memory_fit(stream, train_features, test_features):
    for name in ("padim", "spade"):
        in_memory = FAST_DETECTORS[name]().fit(train_features)
        streamed = FAST_DETECTORS[name]().fit(stream)
        for attribute in ("mean_", "precision_", "pooled_", "gallery_"):
            if hasattr(in_memory, attribute):
                torch.testing.assert_close(getattr(streamed, attribute), getattr(in_memory, attribute),
                                           rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(streamed.anomaly_map(test_features), in_memory.anomaly_map(test_features),
                                   rtol=1e-5, atol=1e-4)
        # Thresholds leave each image out of its own statistics, as in memory.
        np.testing.assert_allclose(streamed.training_scores_, in_memory.training_scores_, rtol=1e-5)
        assert streamed.offset_ == pytest.approx(in_memory.offset_, rel=1e-5)


def test_partial_fit_in_two_halves_equals_one_fit(train_features, test_features):
    whole = FAST_DETECTORS["padim"]().fit(train_features)
    halves = FAST_DETECTORS["padim"]()
    halves.partial_fit(train_features[:12]).partial_fit(train_features[12:])
    torch.testing.assert_close(halves.mean_, whole.mean_, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(halves.precision_, whole.precision_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(halves.anomaly_map(test_features), whole.anomaly_map(test_features), rtol=1e-4)
    assert halves.n_train_samples_ == whole.n_train_samples_ == len(train_features)
    assert len(halves.training_scores_) == len(train_features)
    spade = FAST_DETECTORS["spade"]().partial_fit(train_features[:12]).partial_fit(train_features[12:])
    torch.testing.assert_close(spade.gallery_, FAST_DETECTORS["spade"]().fit(train_features).gallery_)


def test_a_loaded_padim_updates_as_a_refit_would(train_features, test_features, tmp_path):
    first = FAST_DETECTORS["padim"]().fit(train_features[:16])
    save(first, tmp_path / "padim.skcflow")
    updated = load(tmp_path / "padim.skcflow").partial_fit(train_features[16:])
    whole = FAST_DETECTORS["padim"]().fit(train_features)
    # The saved model keeps float32 Gaussians, not their float64 sums.
    np.testing.assert_allclose(updated.anomaly_map(test_features), whole.anomaly_map(test_features), rtol=2e-3)


def test_cflow_updates_train_on_and_recompute_thresholds(train_features, test_features, tmp_path):
    model = FAST_DETECTORS["cflow"]().partial_fit(train_features[:16])
    steps, offset = list(model.n_iter_), model.offset_
    mean = model.whitening_[0].mean.clone()
    model.partial_fit(train_features[16:])
    assert all(after > before for after, before in zip(model.n_iter_, steps))
    assert not torch.equal(model.whitening_[0].mean, mean) and model.offset_ != offset
    assert len(model.training_scores_) == len(train_features) == model.n_train_samples_
    assert np.isfinite(model.anomaly_map(test_features)).all()
    # After a save, the whitening stays as it is and the flows train on.
    save(model, tmp_path / "cflow.skcflow")
    loaded = load(tmp_path / "cflow.skcflow")
    whitening = loaded.whitening_[0].whitener.clone()
    loaded.partial_fit(train_features[:4])
    assert torch.equal(loaded.whitening_[0].whitener, whitening)
    assert loaded.n_train_samples_ == len(train_features) + 4


def test_reservoir_is_a_uniform_bounded_sample(train_features, stream):
    model = FAST_DETECTORS["cflow"](reservoir_size=300).fit(stream)
    for sample, (_, height, width) in zip(model._cache_samples, model._level_shapes()):
        assert len(sample.vectors) == min(300, len(train_features) * height * width)
        counts = torch.bincount(sample.positions, minlength=height * width)
        # About as many vectors of every position.
        assert counts.float().std() < 3 * counts.float().mean().sqrt() + 1
    again = FAST_DETECTORS["cflow"](reservoir_size=300).fit(stream)
    np.testing.assert_array_equal(model.training_scores_, again.training_scores_)


def test_streams_hold_one_batch_and_refuse_iterators(synthetic, tmp_path, monkeypatch):
    for i, image in enumerate(synthetic.train.images):
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    extractor = FeatureExtractor(image_size=64, batch_size=5, device="cpu")
    encoded = []
    transform = FeatureExtractor.transform
    monkeypatch.setattr(FeatureExtractor, "transform",
                        lambda self, X: encoded.append(len(X)) or transform(self, X))
    pipe = make_pipeline(extractor, PaDiM(n_features=20, device="cpu", random_state=0)).fit(tmp_path)
    assert max(encoded) == 5 and sum(encoded) == 2 * len(synthetic.train.images)
    assert pipe[-1].n_train_samples_ == len(synthetic.train.images)
    generator = (batch for batch in [synthetic.train.images])
    with pytest.raises(TypeError, match="iterated over more than once"):
        make_pipeline(FeatureExtractor(image_size=64, device="cpu"), PaDiM()).fit(generator)
    with pytest.raises(TypeError, match="re-iterable"):
        PaDiM().fit(iter([pipe[0].transform(synthetic.train.images)]))
    # A stream that gives fewer images the second time cannot be scored for thresholds.
    shrinking = [pipe[0].transform(synthetic.train.images)]

    class Shrinking:
        def __iter__(self):
            yield shrinking[0]
            shrinking[0] = shrinking[0][:-1]

    for detector in (PaDiM(n_features=20, device="cpu"), CFlowAD(max_iter=2, device="cpu")):
        shrinking[0] = pipe[0].transform(synthetic.train.images)
        with pytest.raises(ValueError, match="must give the same images each time"):
            detector.fit(Shrinking())
    with pytest.raises(ValueError, match="rotation needs the training maps"):
        CFlowAD(rotation=5, max_iter=2, device="cpu").fit(FeatureStream(pipe[0], [synthetic.train.images]))


def test_streaming_cflow_stays_close_to_the_in_memory_fit():
    root = real_data("mvtec_ad")
    train = load_mvtec(root, "bottle", "train", image_size=64)
    test = load_mvtec(root, "bottle", "test", image_size=64)
    extractor = FeatureExtractor(image_size=64, device="cpu").fit(train.images)
    features = extractor.transform(test.images)
    stream = FeatureStream(extractor, [train.images[i : i + 32] for i in range(0, len(train.images), 32)])
    results = []
    for source in (extractor.transform(train.images), stream):
        # A reservoir of a third of the first level's 13,376 vectors.
        model = CFlowAD(max_iter=100, reservoir_size=4096, device="cpu", random_state=0).fit(source)
        results.append((image_auroc(test.target, -model.score_samples(features)),
                        pixel_auroc(test.masks, model.anomaly_map(features))))
    (memory_image, memory_pixel), (stream_image, stream_pixel) = results
    assert memory_image > 0.95 and memory_pixel > 0.9
    assert stream_image >= memory_image - 0.02 and stream_pixel >= memory_pixel - 0.02


def _categories(root):
    for seed, name in enumerate(("cans", "tiles")):
        data = make_defects(n_train=10, n_test=6, image_size=64, random_state=seed)
        for split, bunch in (("train", data.train), ("test", data.test)):
            for i, (image, mask, kind) in enumerate(zip(bunch.images, bunch.masks, bunch.defect_type)):
                folder = root / name / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / f"{i:03d}.png")
                if kind != "good":
                    masks = root / name / "ground_truth" / kind
                    masks.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask * 255).save(masks / f"{i:03d}_mask.png")


FAST_CLI = ["--image-size", "64", "--max-iter", "10", "--quiet", "--models", "padim,cflow"]


def _report(out):
    table = pd.read_csv(out / "results.csv")
    assert sorted(set(table["category"])) == ["cans", "tiles"] and len(table) == 4
    page = (out / "index.html").read_text()
    assert "<h2>cans</h2>" in page and "<h2>tiles</h2>" in page
    assert (out / "cans" / "roc.png").is_file() and (out / "tiles" / "roc.png").is_file()
    return table


def test_many_categories_on_loky(tmp_path, capsys):
    _categories(tmp_path / "data")
    out = tmp_path / "report"
    assert main(["compare", "--root", str(tmp_path / "data"), "--category", "all", "--out", str(out),
                 "--jobs", "2", *FAST_CLI]) == 0
    table = _report(out)
    models = tmp_path / "models"
    assert main(["fit", "--root", str(tmp_path / "data"), "--category", "cans,tiles", "--out", str(models),
                 "--model", "padim", "--image-size", "64", "--quiet", "--jobs", "2"]) == 0
    assert sorted(p.name for p in models.iterdir()) == ["cans.skcflow", "tiles.skcflow"]
    # Scoring shared out among jobs gives what one process gives.
    images = tmp_path / "data" / "cans" / "test"
    main(["score", str(models / "cans.skcflow"), *map(str, sorted(images.iterdir())), "--out",
          str(tmp_path / "alone")])
    main(["score", str(models / "cans.skcflow"), *map(str, sorted(images.iterdir())), "--out",
          str(tmp_path / "shared"), "--jobs", "2"])
    rows = [list(csv.reader(open(tmp_path / d / "scores.csv"))) for d in ("alone", "shared")]
    assert rows[0] == rows[1] and len(rows[0]) == 7
    assert table["image AUROC"].between(0, 1).all()


def test_many_categories_on_a_dask_cluster(tmp_path):
    from dask.distributed import Client, LocalCluster
    from joblib import parallel_backend
    from sklearn.model_selection import GridSearchCV

    from skcflow.metrics import get_scorer
    from skcflow.model_selection import predefined_split

    _categories(tmp_path / "data")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        out = tmp_path / "report"
        assert main(["compare", "--root", str(tmp_path / "data"), "--category", "all", "--out", str(out),
                     "--backend", "dask", "--scheduler", cluster.scheduler_address, *FAST_CLI]) == 0
        _report(out)
        assert len(client.scheduler_info()["workers"]) == 2
        # The same cluster runs scikit-learn's model selection, through joblib.
        data = make_defects(n_train=10, n_test=6, image_size=64, random_state=0)
        X, y, cv = predefined_split(data.train, data.test)
        pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
                             PaDiM(device="cpu", random_state=0))
        search = GridSearchCV(pipe, {"padim__n_features": [10, 40]}, cv=cv,
                              scoring=get_scorer("image_auroc"), n_jobs=2)
        with parallel_backend("dask"):
            search.fit(X, y)
        assert set(search.cv_results_["param_padim__n_features"]) == {10, 40}
    # Without a scheduler's address, skcflow starts a local cluster and stops it.
    out = tmp_path / "local"
    assert main(["compare", "--root", str(tmp_path / "data"), "--category", "cans,tiles", "--out", str(out),
                 "--backend", "dask", "--jobs", "2", *FAST_CLI]) == 0
    _report(out)
