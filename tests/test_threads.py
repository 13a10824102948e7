import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

import skcflow.threads as threads
from skcflow import CFlowAD, FeatureExtractor
from skcflow.threads import available_cores, limit_threads, resolve_threads, set_default_n_jobs

from conftest import FAST_DETECTORS


@pytest.fixture
def follow_the_load():
    previous = set_default_n_jobs(None)
    yield
    set_default_n_jobs(previous)


def test_explicit_n_jobs():
    cores = available_cores()
    assert resolve_threads(3) == 3
    assert resolve_threads(-1) == cores
    assert resolve_threads(-cores - 5) == 1


def test_none_follows_the_idle_cores(monkeypatch, follow_the_load):
    cores = available_cores()
    monkeypatch.setattr(threads, "idle_cores", lambda: 0.2)
    assert resolve_threads(None) == 1
    monkeypatch.setattr(threads, "idle_cores", lambda: cores + 3.0)
    assert resolve_threads(None) == cores
    previous = set_default_n_jobs(2)
    assert resolve_threads(None) == 2
    set_default_n_jobs(previous)


def test_other_processes_count_as_load_and_this_one_does_not(follow_the_load):
    cores = available_cores()
    threads.idle_cores()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        assert threads.idle_cores() <= cores - 0.5
    finally:
        busy.kill()
        busy.wait()


def test_own_cpu_time_is_subtracted(monkeypatch):
    meter = threads._IdleCores()
    cores = len(meter._cpus)
    # (time s, busy CPU s of the allowed cores, this process's CPU s)
    readings = iter([(0.0, 100.0, 10.0), (1.0, 100.0 + cores, 10.0 + cores),
                     (2.0, 100.0 + 2 * cores, 10.0 + cores + 0.5)])
    monkeypatch.setattr(meter, "_reading", lambda: next(readings))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert meter() == pytest.approx(cores)  # all the busy time was this process's
    assert meter() == pytest.approx(0.5)  # others ran cores - 0.5 cores


def test_limit_threads_sets_and_restores_torch_threads():
    before = torch.get_num_threads()
    with limit_threads(1) as chosen:
        assert chosen == 1 and torch.get_num_threads() == 1
        with limit_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_calls_run_on_their_n_jobs(train_features, monkeypatch):
    seen = []
    real = threads.resolve_threads

    def spy(n_jobs):
        seen.append(n_jobs)
        return real(n_jobs)

    monkeypatch.setattr(threads, "resolve_threads", spy)
    model = FAST_DETECTORS["cflow"](n_jobs=1).fit(train_features)
    model.anomaly_map(train_features[:2])
    assert seen and set(seen) == {1}


@pytest.mark.parametrize("name", sorted(FAST_DETECTORS))
def test_n_jobs_is_validated(name, train_features):
    with pytest.raises(InvalidParameterError, match="n_jobs"):
        FAST_DETECTORS[name](n_jobs=0).fit(train_features)
    with pytest.raises(InvalidParameterError, match="n_jobs"):
        FeatureExtractor(n_jobs=0).fit()


@pytest.mark.parametrize("name", sorted(FAST_DETECTORS))
def test_thread_counts_change_results_by_rounding_only(name, synthetic):
    maps = []
    for n_jobs in (1, 2):
        extractor = FeatureExtractor(image_size=64, device="cpu", n_jobs=n_jobs).fit()
        train = extractor.transform(synthetic.train.images)
        model = FAST_DETECTORS[name](n_jobs=n_jobs).fit(train)
        maps.append(model.anomaly_map(extractor.transform(synthetic.test.images)))
    np.testing.assert_allclose(maps[0], maps[1], rtol=0, atol=1e-3 * np.ptp(maps[0]))


def test_same_n_jobs_same_model(train_features, test_features):
    a = CFlowAD(max_iter=10, device="cpu", random_state=0, n_jobs=1).fit(train_features)
    b = CFlowAD(max_iter=10, device="cpu", random_state=0, n_jobs=1).fit(train_features)
    np.testing.assert_array_equal(a.anomaly_map(test_features), b.anomaly_map(test_features))
