"""Helpers shared by the benchmark scripts."""

import datetime
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch


def best_time(function, repeats):
    """Best wall time of ``repeats`` calls, and the result."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def machine_description():
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        f"- CPU: {model}, {len(os.sched_getaffinity(0))} cores available "
        f"(os.cpu_count() = {os.cpu_count()}); "
        f"torch threads: {torch.get_num_threads()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, scikit-learn {sklearn.__version__}, "
        f"torch {torch.__version__}",
        f"- Date: {datetime.datetime.now().isoformat(timespec='seconds')}",
    ]


def write_results(path, title, description, table_lines):
    """Write and print a results page: title, description, machine, table."""
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    lines = [f"# {title}", "", description, "", *machine_description(),
             f"- Peak resident memory of the run: {peak_gb:.2f} GB", "", *table_lines, ""]
    Path(path).write_text("\n".join(lines))
    print("\n".join(lines))
