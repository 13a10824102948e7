"""Speed of skcflow.metrics on a test-set-sized input.

Times ``aupro`` and ``pixel_auroc`` on 200 anomaly maps of 256 x 256 with
realistic masks (a few blobs in most images), next to
``sklearn.metrics.roc_auc_score`` on the same pixels, and compares ``aupro``
with the slow loop-over-thresholds reference of tests/test_metrics.py on a
small input, in the same run. Writes a markdown table to
benchmarks/results/aupro_speed.md.

Usage: python benchmarks/bench_aupro.py [--repeats 5]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from _common import RESULTS, ROOT, best_time, machine_description

from skcflow.metrics import aupro, pixel_auroc

sys.path.insert(0, str(ROOT / "tests"))
from test_metrics import reference_aupro  # noqa: E402


def make_case(n_images, size, seed=0):
    """Masks with 1-3 elliptical blobs in 3 images out of 4, and smooth maps
    that respond to the blobs only partly, as a real detector would."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    masks = np.zeros((n_images, size, size), dtype=bool)
    for mask in masks[: 3 * n_images // 4]:
        for _ in range(rng.integers(1, 4)):
            center = rng.uniform(0.1 * size, 0.9 * size, 2)
            radii = rng.uniform(0.015 * size, 0.12 * size, 2)
            distance = ((rows - center[0]) / radii[0]) ** 2
            distance += ((cols - center[1]) / radii[1]) ** 2
            mask |= distance < 1
    noise = rng.standard_normal(masks.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (0, size / 64, size / 64))
    response = masks.astype(np.float32)
    response = ndimage.gaussian_filter(response, (0, size / 128, size / 128))
    maps = noise / noise.std() + 1.5 * response
    return masks, maps.astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "aupro_speed.md",
    )
    args = parser.parse_args()

    masks, maps = make_case(200, 256)
    maps64 = maps.astype(np.float64)
    n_regions = sum(ndimage.label(mask, np.ones((3, 3)))[1] for mask in masks)
    cases = [
        ("`aupro`, float32 maps, fpr_limit=0.3", lambda: aupro(masks, maps)),
        ("`aupro`, float64 maps, fpr_limit=0.3", lambda: aupro(masks, maps64)),
        ("`aupro`, float32 maps, fpr_limit=1.0", lambda: aupro(masks, maps, 1.0)),
        ("`pixel_auroc`, float32 maps", lambda: pixel_auroc(masks, maps)),
        ("`pixel_auroc`, float64 maps", lambda: pixel_auroc(masks, maps64)),
    ]
    rows = []
    for label, function in cases:
        seconds, value = best_time(function, args.repeats)
        rows.append(f"| {label} | {args.repeats} | {seconds:.3f} | {value:.6f} |")
        print(rows[-1])
    # Several seconds a call: once is enough to make the point.
    seconds, value = best_time(lambda: roc_auc_score(masks.ravel(), maps.ravel()), 1)
    label = "`sklearn.metrics.roc_auc_score`, float32 maps"
    rows.append(f"| {label} | 1 | {seconds:.3f} | {value:.6f} |")
    print(rows[-1])

    small_masks, small_maps = make_case(4, 32, seed=1)
    fast_seconds, fast_value = best_time(
        lambda: aupro(small_masks, small_maps), args.repeats
    )
    slow_seconds, slow_value = best_time(
        lambda: reference_aupro(small_masks, small_maps), 1
    )
    print(f"small case: fast {fast_seconds:.5f} s, reference {slow_seconds:.3f} s")

    n_defective = int(masks.any(axis=(1, 2)).sum())
    lines = [
        "# AUPRO speed",
        "",
        "Written by `benchmarks/bench_aupro.py`; times are the best of the repeats.",
        "",
        *machine_description(),
        "",
        f"## 200 maps of 256 x 256 ({masks.size:,} pixels, {n_regions} defect "
        f"regions in {n_defective} images)",
        "",
        "| computation | repeats | best time (s) | value |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"## Against the slow reference (4 maps of 32 x 32, "
        f"{len(np.unique(small_maps))} distinct values)",
        "",
        "The reference loops over thresholds and regions "
        "(`reference_aupro` in `tests/test_metrics.py`).",
        "",
        "| implementation | repeats | best time (s) | value |",
        "|---|---:|---:|---:|",
        f"| `aupro` | {args.repeats} | {fast_seconds:.5f} | {fast_value:.9f} |",
        f"| `reference_aupro` | 1 | {slow_seconds:.3f} | {slow_value:.9f} |",
        "",
        f"Speed-up: {slow_seconds / fast_seconds:,.0f}x; "
        f"absolute difference: {abs(fast_value - slow_value):.1e}.",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
