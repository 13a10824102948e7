"""Many categories, or many files, at once: one job each, through joblib.

``loky`` runs the jobs in worker processes on this machine; ``dask`` on a
dask.distributed cluster, given by its scheduler's address or started on
this machine for the run (worker processes, one thread each). Every job
gets its share of the cores for torch, so that jobs share them instead of
fighting over them.
"""

import contextlib
import os

BACKENDS = ("loky", "dask")


def run_jobs(function, tasks, backend="loky", scheduler=None, n_jobs=None):
    """``[function(*task, threads=...) for task in tasks]``, the tasks in parallel.

    Parameters
    ----------
    function : callable
        Picklable (module level); takes ``threads``, the torch threads it
        may use (None: its worker's default).
    tasks : list of tuple
    backend : {"loky", "dask"}
    scheduler : str, default=None
        A dask scheduler's address; None starts a local cluster.
    n_jobs : int, default=None
        Jobs at once (and local dask workers); None: one per task, at most
        one per core.
    """
    import joblib

    cores = os.cpu_count() or 1
    n_jobs = n_jobs or min(len(tasks), cores)
    # A remote cluster's workers know their own cores.
    threads = None if scheduler else max(1, cores // n_jobs)
    with _backend(backend, scheduler, n_jobs):
        return joblib.Parallel(n_jobs=n_jobs)(
            joblib.delayed(function)(*task, threads=threads) for task in tasks)


@contextlib.contextmanager
def _backend(backend, scheduler, n_jobs):
    import joblib

    if backend == "loky":
        with joblib.parallel_backend("loky"):
            yield
        return
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
    try:
        with Client(scheduler or cluster), joblib.parallel_backend("dask"):
            yield
    finally:
        if cluster is not None:
            cluster.close()


def use_threads(threads):
    """Give this job's estimators ``threads`` threads (None keeps the thread policy)."""
    if threads is not None:
        from .threads import set_default_n_jobs

        set_default_n_jobs(threads)
