import threading
import time

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

import skcflow.threads as threads
from skcflow import CFlowAD, FeatureExtractor
from skcflow.threads import available_cores, parallel_map, resolve_threads, set_default_n_jobs, single_threaded

from conftest import FAST_DETECTORS


def test_n_jobs_means_workers():
    cores = available_cores()
    assert resolve_threads(3) == 3
    assert resolve_threads(-1) == cores
    assert resolve_threads(-cores - 5) == 1
    assert resolve_threads(None) == cores
    previous = set_default_n_jobs(2)
    try:
        assert resolve_threads(None) == 2
    finally:
        set_default_n_jobs(previous)


def test_parallel_map_keeps_order_errors_and_one_thread_per_worker():
    before = torch.get_num_threads()
    seen = parallel_map(lambda i: (i, torch.get_num_threads()), range(20), 3)
    assert [i for i, _ in seen] == list(range(20))
    assert {n for _, n in seen} == {1}
    assert torch.get_num_threads() == before

    def fail(i):
        if i == 7:
            raise ValueError("image 7 is bad")
        return i

    with pytest.raises(ValueError, match="image 7 is bad"):
        parallel_map(fail, range(10), 2)
    with single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_calls_run_on_their_n_jobs(train_features, monkeypatch):
    seen = []
    real = threads.resolve_threads
    monkeypatch.setattr(threads, "resolve_threads", lambda n_jobs: seen.append(n_jobs) or real(n_jobs))
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
def test_results_do_not_depend_on_n_jobs(name, synthetic):
    results = []
    for n_jobs in (1, 2, 3):
        extractor = FeatureExtractor(image_size=64, device="cpu", n_jobs=n_jobs).fit()
        model = FAST_DETECTORS[name](n_jobs=n_jobs).fit(extractor.transform(synthetic.train.images))
        test = extractor.transform(synthetic.test.images)
        results.append((test.maps, model.anomaly_map(test), model.offset_))
    for maps, anomaly_map, offset in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(maps, results[0][0]))
        np.testing.assert_array_equal(anomaly_map, results[0][1])
        assert offset == results[0][2]


def test_levels_train_at_once_from_streams_of_their_own(train_features):
    one = CFlowAD(max_iter=10, device="cpu", random_state=0, n_jobs=1).fit(train_features)
    two = CFlowAD(max_iter=10, device="cpu", random_state=0, n_jobs=2).fit(train_features)
    for a, b in zip(one.flows_.state_dict().values(), two.flows_.state_dict().values()):
        assert torch.equal(a, b)


def test_the_calling_threads_own_work_runs_on_one_thread(synthetic, monkeypatch):
    # What a call computes outside its workers (gathering their results,
    # checks, resizing) would otherwise run on torch's own threads, which
    # stall on a busy machine; the caller's setting comes back afterwards.
    import skcflow.base as base
    import skcflow.features as features

    seen = {}

    def recording(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            seen.setdefault(name, set()).add(torch.get_num_threads())
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    recording(features, "progress")
    recording(base, "all_finite")
    recording(base, "restore")
    torch.set_num_threads(2)
    extractor = FeatureExtractor(image_size=64, device="cpu", n_jobs=2).fit()
    train = extractor.transform(synthetic.train.images)
    model = CFlowAD(max_iter=5, device="cpu", random_state=0, n_jobs=2).fit(train)
    model.score_samples(train[:3])
    model.anomaly_map(train[:3])
    assert seen == {"progress": {1}, "all_finite": {1}, "restore": {1}}
    assert torch.get_num_threads() == 2


def test_parallel_map_in_a_worker_runs_in_that_worker():
    # The pool's workers may all be busy with items that map again: the
    # inner items must not wait for a free worker.
    def outer(i):
        me = threading.get_ident()
        return parallel_map(lambda j: threading.get_ident() == me, range(3), 2)

    assert parallel_map(outer, range(4), 2) == [[True] * 3] * 4


def test_one_images_levels_are_shared_by_the_calling_thread_and_the_pool(train_features, test_features,
                                                                        monkeypatch):
    model = FAST_DETECTORS["cflow"](n_jobs=2, batch_size=1).fit(train_features)
    alone = model.anomaly_map(test_features[:3])
    threads_seen = set()
    decode = CFlowAD._decode

    def seen(self, maps, method, *args):
        if method == "log_prob":
            threads_seen.add(threading.current_thread())
        return decode(self, maps, method, *args)

    monkeypatch.setattr(CFlowAD, "_decode", seen)
    model.anomaly_map(test_features[0])
    assert len(model.levels_) > 1
    assert threading.current_thread() in threads_seen and len(threads_seen) == 2
    np.testing.assert_array_equal(model.set_params(n_jobs=1).anomaly_map(test_features[:3]), alone)


def test_the_calling_thread_is_one_of_the_workers():
    # Two workers are the caller and one pool thread: an item that waits for
    # another to start can only finish if both run at once.
    started = [threading.Event(), threading.Event()]

    def meet(i):
        started[i].set()
        assert started[1 - i].wait(timeout=30), "the items did not run at once"
        return threading.current_thread()

    seen = parallel_map(meet, range(2), 2)
    assert threading.current_thread() in seen and len(set(seen)) == 2


def test_a_failed_item_stops_the_others_from_starting():
    ran = []

    def fail_first(i):
        ran.append(i)
        if i == 0:
            raise ValueError("image 0 is bad")
        time.sleep(0.01)
        return i

    with pytest.raises(ValueError, match="image 0 is bad"):
        parallel_map(fail_first, range(50), 2)
    assert len(ran) < 50
