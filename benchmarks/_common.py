"""Helpers shared by the benchmark scripts."""

import argparse
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

from skcflow import FeatureExtractor, load_mvtec

# Read when a benchmark starts: what else was running before it loaded the cores.
LOAD_AT_START = os.getloadavg()

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CATEGORIES = {"bottle": DATA / "mvtec_ad", "magnetic_tile": DATA / "mtd"}


def timed(function, *args):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


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
        "- Load average (1, 5, 15 min) when the run started: "
        + " / ".join(f"{v:.2f}" for v in LOAD_AT_START)
        + "; when it ended: " + " / ".join(f"{v:.2f}" for v in os.getloadavg()),
    ]


def write_results(path, title, description, table_lines):
    """Write and print a results page: title, description, machine, table."""
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    lines = [f"# {title}", "", description, "", *machine_description(),
             f"- Peak resident memory of the run: {peak_gb:.2f} GB", "", *table_lines, ""]
    Path(path).write_text("\n".join(lines))
    print("\n".join(lines))


def markdown_table(rows, columns):
    """Markdown lines of ``rows`` (dicts), scores to 4 decimals, other floats to 1."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        lines.append("| " + " | ".join(
            f"{c:.4f}" if isinstance(c, float) and c < 1 else
            f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return lines


def markdown_sections(sections):
    """Lines of ``## title`` then a table, for each ``(title, rows)``; columns from the first row."""
    lines = []
    for title, rows in sections:
        lines += [f"## {title}", "", *markdown_table(rows, list(rows[0])), ""]
    return lines


def category_parser(description, results_name):
    """Options shared by the benchmarks that run on ../shared/data's categories."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / results_name))
    return parser


def data_missing():
    """Say so, and return True, where ../shared/data is absent."""
    if DATA.is_dir():
        return False
    print(f"skipped: real data not found at {DATA}")
    return True


def load_category(category, image_size, inference_dtype="auto"):
    """``(train, test, train_features, test_features, test_encode_seconds)``.

    Features come from the default efficientnet_lite0 extractor (at
    ``inference_dtype``); the test set's extraction is timed, as the
    encoder-only reference of throughput.
    """
    root = CATEGORIES[category]
    train = load_mvtec(root, category, split="train", image_size=image_size)
    test = load_mvtec(root, category, split="test", image_size=image_size)
    extractor = FeatureExtractor(image_size=image_size, inference_dtype=inference_dtype).fit()
    train_features = extractor.transform(train.images)
    start = time.perf_counter()
    test_features = extractor.transform(test.images)
    return train, test, train_features, test_features, time.perf_counter() - start
