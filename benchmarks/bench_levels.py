"""Where CFlowAD's accuracy comes from: each pyramid level, and their aggregation.

For each category and each level of the default efficientnet_lite0 pyramid,
the anomaly map of the level alone (minus the log-likelihood per dimension,
upsampled bilinearly, no smoothing) is evaluated for two density models of
the same features: CFlowAD's conditional flow (default parameters, whose
flows start from whitened features), the paper's decoder (``whiten=False``,
a positional encoding only) and a Gaussian per position (mean and
covariance + 0.01 I, PaDiM's model without its channel subset or
smoothing), the flow's reference point. Both are then
aggregated across levels as CFLOW-AD does (probabilities relative to the
best training position, summed), so the last rows show how far that
aggregation lets exact per-position Gaussian densities go: a ceiling for a
flow that matches them. Writes benchmarks/results/levels.md.

Usage: python benchmarks/bench_levels.py [--categories bottle,magnetic_tile]
"""

import math
import sys

import torch
from _common import category_parser, data_missing, load_category, write_results

from skcflow import CFlowAD, Features, PaDiM
from skcflow.base import upsample
from skcflow.cflow import aggregate_likelihoods
from skcflow.metrics import aupro, image_auroc, pixel_auroc


FLOWS = {"CFlowAD": True, "CFlowAD, whiten=False (paper's decoder)": False}


def batched(compute, features, size=16):
    """``compute`` applied to ``features`` a few images at a time."""
    return [compute(features[start : start + size]) for start in range(0, len(features), size)]


def gaussian_log_likelihood(model, features):
    """Per-dimension log-likelihood ``(N, H, W)`` under a fitted PaDiM's Gaussians."""
    _, height, width = model.feature_shapes_[0]
    dim = len(model.channels_)
    log_det_precision = torch.linalg.slogdet(model.precision_.double())[1]
    squared = torch.cat(batched(model._squared_distances, features)).double()
    log_p = 0.5 * (log_det_precision - squared - dim * math.log(2 * math.pi)) / dim
    return log_p.view(len(features), height, width)


def flow_log_likelihoods(model, features):
    """Per level, the flow's log-likelihood per dimension ``(N, H_k, W_k)``."""
    return [torch.cat(levels).double() for levels in zip(*batched(model._level_log_probs, features))]


def row(category, model, level, test, maps):
    maps = maps.float().numpy()
    scores = maps.reshape(len(maps), -1).max(1)
    return (f"| {category} | {model} | {level} | {image_auroc(test.target, scores):.4f} | "
            f"{pixel_auroc(test.masks, maps):.4f} | {aupro(test.masks, maps):.4f} |")


def evaluate(category, image_size, seed):
    _, test, train_features, test_features, _ = load_category(category, image_size)
    size = test_features.input_size
    flows = {name: CFlowAD(whiten=whiten, random_state=seed).fit(train_features)
             for name, whiten in FLOWS.items()}
    rows, gaussian_maxima, gaussian_test = [], [], []
    with torch.inference_mode():
        flow_test = {name: flow_log_likelihoods(flow, test_features) for name, flow in flows.items()}
        for level in range(len(train_features.maps)):
            one = [Features([f.maps[level]], f.input_size) for f in (train_features, test_features)]
            gaussian = PaDiM(n_features=10**6, random_state=seed).fit(one[0])
            gaussian_maxima.append(float(gaussian_log_likelihood(gaussian, one[0]).max()))
            gaussian_test.append(gaussian_log_likelihood(gaussian, one[1]))
            name = f"{level} ({train_features.shapes[level][0]} channels)"
            rows += [row(category, model, name, test, upsample(-log_p[level], size))
                     for model, log_p in flow_test.items()]
            rows.append(row(category, "Gaussian per position", name, test,
                            upsample(-gaussian_test[-1], size)))
            print(*rows[-len(FLOWS) - 1:], sep="\n", flush=True)
        rows += [row(category, model, "all, aggregated", test,
                     torch.from_numpy(flow.anomaly_map(test_features)))
                 for model, flow in flows.items()]
        rows.append(row(category, "Gaussian per position", "all, aggregated", test,
                        aggregate_likelihoods(gaussian_test, gaussian_maxima, size)))
    print(*rows[-len(FLOWS) - 1:], sep="\n", flush=True)
    return rows


def main(argv=None):
    args = category_parser(__doc__.splitlines()[0], "levels.md").parse_args(argv)
    if data_missing():
        return 0
    rows = []
    for category in args.categories.split(","):
        rows += evaluate(category, args.image_size, args.seed)
    write_results(args.out, "Accuracy per pyramid level, and after CFLOW-AD's aggregation", (
        f"Written by `benchmarks/bench_levels.py`; efficientnet_lite0 features at "
        f"{args.image_size} px, CFlowAD with default parameters (random_state={args.seed}), "
        "and with whiten=False. "
        "Per level: minus the log-likelihood per dimension, upsampled, no smoothing. "
        "'all, aggregated': CFLOW-AD's sum of probabilities relative to the best "
        "training position, for the flow (CFlowAD's own maps) and for exact Gaussians."
    ), [
        "| category | density model | level | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
