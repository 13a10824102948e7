from pathlib import Path

import numpy as np
import pytest
import torch

from skcflow import SPADE, CFlowAD, FeatureExtractor, PaDiM, make_defects, make_pipeline

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_data(*parts):
    """Path under ../shared/data, or skip the test with a message."""
    path = DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (expected beside the project root)")
    return path


@pytest.fixture(scope="session")
def synthetic():
    return make_defects(n_train=24, n_test=12, image_size=64, random_state=0)


@pytest.fixture(scope="session")
def extractor():
    return FeatureExtractor(image_size=64, device="cpu").fit()


@pytest.fixture(scope="session")
def train_features(synthetic, extractor):
    return extractor.transform(synthetic.train.images)


@pytest.fixture(scope="session")
def test_features(synthetic, extractor):
    return extractor.transform(synthetic.test.images)


# Each detector, small enough to fit in about a second; keywords override.
FAST_DETECTORS = {
    "cflow": lambda **kw: CFlowAD(**{"max_iter": 10, "fiber_batch_size": 256, "condition_dim": 32,
                                     "device": "cpu", "random_state": 0, **kw}),
    "padim": lambda **kw: PaDiM(**{"n_features": 40, "device": "cpu", "random_state": 0, **kw}),
    "spade": lambda **kw: SPADE(**{"device": "cpu", **kw}),
}


@pytest.fixture(scope="module", params=sorted(FAST_DETECTORS))
def fitted_pipeline(request, synthetic):
    """Each detector in a small pipeline, fitted on the synthetic training images."""
    pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"), FAST_DETECTORS[request.param]())
    return pipe.fit(synthetic.train.images)


@pytest.fixture(autouse=True)
def _fixed_threads():
    # Scores are compared bit for bit across fits: keep one thread setting.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    np.seterr(all="warn")


def loo_maps(model, features):
    """A fitted detector's training maps of ``features`` (its training images,
    in order), each image left out of its own statistics where it can be."""
    return np.concatenate([m.numpy() for m in model._iter_batches(features, model._training_batch_maps)])
