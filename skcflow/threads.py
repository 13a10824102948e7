"""The thread policy: data-parallel workers, each on one thread.

Every estimator takes ``n_jobs`` (scikit-learn's name for it). skcflow's
work splits into independent pieces (images to encode or score, pyramid
levels to train), and :func:`parallel_map` runs them on ``n_jobs`` workers
(the calling thread and ``n_jobs - 1`` pool threads) while torch's
intra-op pool and the BLAS pools of numpy and scipy are held at one
thread. So is the calling thread's own work, for the whole of each public
method (:func:`single_threaded` as a decorator): gathering
the workers' results, checking and resizing them would otherwise run on
torch's threads, and on a busy machine those few operators stalled a call
about as long as all of its images took (beside 2 busy processes on 2
cores, end-to-end scoring kept 0.34 of its idle images/s at batch 1 and
0.35 at batch 32 with them, 0.63 and 0.62 without:
``benchmarks/results/speed.md`` at commits f93a1ac and 7f1da82). The
caller's own settings are back when the method returns.

Why not torch's own threads: its OpenMP workers split every operator and
wait for each other at its end. Where other processes hold the cores (an
inspection PC runs a camera driver and a UI), one descheduled worker stalls
the others for a whole time slice per operator, and work made of many small
operators, such as a flow's training step, runs up to 8 times slower than
alone (CFlowAD's fit, ``benchmarks/results/speed_torch_threads.md``). Workers that each take whole
images never wait for each other, so a busy machine costs them only its
share of the cores; and every piece is computed on one thread in the same
way whatever ``n_jobs`` and the load are, so results do not depend on them.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

import torch

_default_n_jobs = None
_executors = {}
_worker = threading.local()


def available_cores():
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_default_n_jobs(n_jobs):
    """Set what ``n_jobs=None`` means in this process; returns the previous setting.

    ``None`` (the initial setting) means every available core. Worker
    processes that share a machine (``skcflow compare --jobs``) get their
    share of the cores this way.
    """
    global _default_n_jobs
    previous, _default_n_jobs = _default_n_jobs, n_jobs
    return previous


def resolve_threads(n_jobs):
    """Workers for ``n_jobs``: None, :func:`set_default_n_jobs`'s setting or
    else every available core; -1, every core; -2, all but one, and so on;
    a positive int, that many."""
    if n_jobs is None:
        n_jobs = _default_n_jobs
    cores = available_cores()
    if n_jobs is None:
        return cores
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return int(n_jobs)


_controller = None


def _blas_pools():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


@contextmanager
def single_threaded():
    """Hold torch's intra-op pool and the BLAS pools at one thread for the
    block (or, as ``@single_threaded()``, the decorated function's call)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas_pools().limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


def _executor(workers):
    # Threads do not survive a fork: a child process makes its own.
    key = (os.getpid(), workers)
    if key not in _executors:
        _executors[key] = ThreadPoolExecutor(workers, thread_name_prefix="skcflow")
    return _executors[key]


def parallel_map(function, items, n_jobs):
    """``[function(item) for item in items]`` on ``n_jobs`` single-threaded workers.

    The calling thread is one of the workers: it takes items as the pool's
    ``n_jobs - 1`` threads do, rather than waiting for them. A caller that
    only waited left its core to threads that had been idle, and each
    handover of Python's lock to such a thread is slow: right after an
    image's encoding, CFlowAD's map of it took 5.4 to 7.0 ms with its two
    levels on two pool threads, and 4.7 to 5.1 ms with the calling thread
    computing one of them (bottle's default model, 2 cores).

    ``function`` runs in several threads: thread-local torch modes
    (``torch.inference_mode``, ``torch.autocast``) must be entered inside it.
    Called in a worker, it runs there, item after item: the other workers
    may all be busy with items of their own.
    """
    items = list(items)
    workers = 1 if getattr(_worker, "busy", False) else min(resolve_threads(n_jobs), len(items))
    with single_threaded():
        if workers <= 1:
            return [function(item) for item in items]
        return _shared(function, items, workers)


def _shared(function, items, workers):
    """``parallel_map`` on the calling thread and ``workers - 1`` pool threads."""
    results, order, lock, failed = [None] * len(items), iter(range(len(items))), threading.Lock(), []

    def take():
        with lock:
            return None if failed else next(order, None)

    def work():
        # OpenMP's thread count is each thread's own setting.
        torch.set_num_threads(1)
        was_busy, _worker.busy = getattr(_worker, "busy", False), True
        try:
            while (i := take()) is not None:
                results[i] = function(items[i])
        except BaseException:
            failed.append(True)
            raise
        finally:
            _worker.busy = was_busy

    futures = [_executor(workers - 1).submit(work) for _ in range(workers - 1)]
    try:
        work()
    finally:
        wait(futures)
    for future in futures:
        future.result()
    return results
