"""Where CFlowAD's accuracy comes from: each pyramid level, and their aggregation.

For each category, CFlowAD is fitted with its defaults and with one default
changed at a time: all three levels of the efficientnet_lite0 pyramid
(``n_levels=None``), the features as they are (``neighborhood=1``), no
whitening (``whiten=False``), and the paper's settings together
(``whiten=False, neighborhood=1, n_levels=None``).
For each modelled level, the level's own map (minus the log-likelihood per
dimension, upsampled bilinearly, no smoothing) is evaluated, then the
aggregated map (CFlowAD's ``anomaly_map``). The default fit is also
aggregated with one normalising maximum per level, as the paper's code
does, instead of one per position. The reference point is a Gaussian per
position on the same neighbourhood-averaged features (mean and covariance +
0.01 I: PaDiM's model without its channel subset or smoothing), per level
and aggregated as the default CFlowAD is. Writes
benchmarks/results/levels.md.

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

VARIANTS = {
    "CFlowAD": {},
    "CFlowAD, n_levels=None": {"n_levels": None},
    "CFlowAD, neighborhood=1": {"neighborhood": 1},
    "CFlowAD, whiten=False": {"whiten": False},
    "CFlowAD, paper's settings": {"whiten": False, "neighborhood": 1, "n_levels": None},
}


def batched(compute, features, size=16):
    """``compute`` applied to ``features`` a few images at a time."""
    return [compute(features[start : start + size]) for start in range(0, len(features), size)]


def gaussian_log_likelihood(model, features):
    """Per-dimension log-likelihood ``(N, H, W)`` under a fitted PaDiM's Gaussians."""
    _, height, width = model.feature_shapes_[0]
    dim = len(model.channels_)
    log_det_precision = torch.linalg.slogdet(model.precision_.double())[1]
    maps = model._maps()
    squared = torch.cat(batched(lambda batch: maps.squared_distances(*batch.maps), features)).double()
    log_p = 0.5 * (log_det_precision - squared - dim * math.log(2 * math.pi)) / dim
    return log_p.view(len(features), height, width)


def flow_log_likelihoods(model, features):
    """Per modelled level, the flow's log-likelihood per dimension ``(N, H_k, W_k)``."""
    return [torch.cat(levels).double() for levels in zip(*batched(model._level_log_probs, features))]


def level_name(model, features, level):
    index = model.levels_[level]
    return f"{index} ({features.shapes[index][0]} channels)"


def row(category, model, level, test, maps):
    maps = maps.float().numpy()
    scores = maps.reshape(len(maps), -1).max(1)
    line = (f"| {category} | {model} | {level} | {image_auroc(test.target, scores):.4f} | "
            f"{pixel_auroc(test.masks, maps):.4f} | {aupro(test.masks, maps):.4f} |")
    print(line, flush=True)
    return line


def evaluate(category, image_size, seed):
    _, test, train_features, test_features, _ = load_category(category, image_size)
    size = test_features.input_size
    rows = []
    for name, params in VARIANTS.items():
        model = CFlowAD(random_state=seed, **params).fit(train_features)
        with torch.inference_mode():
            log_probs = flow_log_likelihoods(model, test_features)
            for level, log_prob in enumerate(log_probs):
                rows.append(row(category, name, level_name(model, test_features, level), test,
                                upsample(-log_prob, size)))
            rows.append(row(category, name, "aggregated", test,
                            torch.from_numpy(model.anomaly_map(test_features))))
            if not params:
                default = model
                one_maximum = [m.max() for m in model.log_prob_max_]
                rows.append(row(category, name, "aggregated, one maximum per level (paper's code)",
                                test, aggregate_likelihoods(log_probs, one_maximum, size)))
    # Gaussians on the features the default CFlowAD models.
    train_levels, test_levels = (list(default._levels(f)) for f in (train_features, test_features))
    maxima, log_probs = [], []
    with torch.inference_mode():
        for level, (train_map, test_map) in enumerate(zip(train_levels, test_levels)):
            one = [Features([m], size) for m in (train_map, test_map)]
            gaussian = PaDiM(n_features=10**6, random_state=seed).fit(one[0])
            maxima.append(gaussian_log_likelihood(gaussian, one[0]).amax(0))
            log_probs.append(gaussian_log_likelihood(gaussian, one[1]))
            rows.append(row(category, "Gaussian per position", level_name(default, test_features, level),
                            test, upsample(-log_probs[-1], size)))
        rows.append(row(category, "Gaussian per position", "aggregated", test,
                        aggregate_likelihoods(log_probs, maxima, size)))
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
        f"{args.image_size} px, CFlowAD (random_state={args.seed}) with default parameters "
        "and with one or all of them set as in the paper. Per level: minus the "
        "log-likelihood per dimension, upsampled, no smoothing. 'aggregated': CFLOW-AD's "
        "sum of probabilities, each relative to the best training vector at its position "
        "(CFlowAD's own maps), or, as in the paper's code, to the best one of the level. "
        "Gaussians (in-sample maxima) are fitted on the neighbourhood-averaged levels the "
        "default CFlowAD models."
    ), [
        "| category | density model | level | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
