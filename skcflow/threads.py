"""The thread policy: how many threads skcflow's torch and BLAS work uses.

Every estimator takes ``n_jobs`` (scikit-learn's name for it) and runs each
call (``fit``, ``transform``, scoring) under :func:`limit_threads`, which sets
torch's intra-op pool and, through threadpoolctl, the BLAS and OpenMP pools
of numpy and scipy for the call's duration, then restores them.

Why not whatever torch picks: torch starts one thread per core and its
OpenMP workers wait at every operator's end for all the others. Where other
processes hold the cores (an inspection PC runs a camera driver and a UI),
one descheduled worker stalls the others for a whole time slice per
operator; work made of many small operators, such as a flow's training
step, then runs 10 to 100 times slower than on one thread. The default
(``n_jobs=None``) therefore uses the cores that other processes left idle
over the last moments, at least one: all of them on an idle machine, one
thread (which never waits for another) on a busy one.
"""

import os
import time
from contextlib import contextmanager

import torch

# Shorter windows count too few clock ticks to tell a busy core from an
# idle one: the last choice is kept for calls closer together than this.
_MIN_WINDOW_S = 0.2
# First call in a process: sample the cores for this long.
_FIRST_WINDOW_S = 0.05


def available_cores():
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _IdleCores:
    """Cores left idle by other processes, from ``/proc/stat`` (Linux).

    Busy time of this process's allowed cores, less this process's own CPU
    time, over the window since the previous reading: so skcflow's own
    threads never count as load that would make it shrink its pool.
    """

    def __init__(self):
        self._cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._idle = None

    def _reading(self):
        busy = 0
        with open("/proc/stat") as stat:
            for line in stat:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *ticks = line.split()
                if int(name[3:]) in self._cpus:
                    values = [int(t) for t in ticks]
                    # user, nice, system, idle, iowait, irq, softirq, steal
                    busy += sum(values[:8]) - values[3] - values[4]
        own = sum(os.times()[:2])
        return time.monotonic(), busy / self._tick, own

    def __call__(self):
        if self._cpus is None or not os.path.exists("/proc/stat"):
            return float(available_cores())
        if self._last is None:
            self._last = self._reading()
            time.sleep(_FIRST_WINDOW_S)
        now = self._reading()
        elapsed = now[0] - self._last[0]
        if elapsed >= _MIN_WINDOW_S or self._idle is None:
            others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / elapsed
            self._idle = max(0.0, len(self._cpus) - others)
            self._last = now
        return self._idle


_idle_cores = _IdleCores()


def idle_cores():
    """How many of this process's cores other processes left idle lately (a float)."""
    return _idle_cores()


_default_n_jobs = None


def set_default_n_jobs(n_jobs):
    """Set what ``n_jobs=None`` means in this process; returns the previous setting.

    ``None`` (the initial setting) follows the load; an int is taken as
    every estimator's ``n_jobs``. Worker processes that share a machine
    (``skcflow compare --jobs``) get their share of the cores this way.
    """
    global _default_n_jobs
    previous, _default_n_jobs = _default_n_jobs, n_jobs
    return previous


def resolve_threads(n_jobs):
    """Threads for ``n_jobs``: None, :func:`set_default_n_jobs`'s setting or
    else the idle cores (at least 1); -1, every core; -2, all but one, and
    so on; a positive int, that many."""
    cores = available_cores()
    if n_jobs is None:
        n_jobs = _default_n_jobs
    if n_jobs is None:
        return max(1, min(cores, int(idle_cores() + 0.5)))
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
def limit_threads(n_jobs):
    """Run the block on :func:`resolve_threads` ``(n_jobs)`` threads.

    torch's intra-op pool and numpy's and scipy's BLAS pools are set for the
    block and restored after it. Nested blocks choose again (a long fit
    re-reads the load between its stages).

    Yields
    ------
    threads : int
    """
    threads = resolve_threads(n_jobs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with _blas_pools().limit(limits=threads, user_api="blas"):
            yield threads
    finally:
        torch.set_num_threads(previous)
