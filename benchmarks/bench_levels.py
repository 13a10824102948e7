"""Where CFlowAD's accuracy comes from: each pyramid level, and their aggregation.

For each category and each level of the default efficientnet_lite0 pyramid,
the anomaly map of the level alone (minus the log-likelihood per dimension,
upsampled bilinearly, no smoothing) is evaluated for two density models of
the same features: CFlowAD's conditional flow (default parameters) and a
Gaussian per position (mean and covariance + 0.01 I, PaDiM's model without
its channel subset or smoothing), the flow's reference point. Both are then
aggregated across levels as CFLOW-AD does (probabilities relative to the
best training position, summed), so the last rows show how far that
aggregation lets exact per-position Gaussian densities go: a ceiling for a
flow that matches them. Writes benchmarks/results/levels.md.

Usage: python benchmarks/bench_levels.py [--categories bottle,magnetic_tile]
"""

import argparse
import math
import sys
from pathlib import Path

import torch
from _common import write_results

from skcflow import CFlowAD, FeatureExtractor, Features, PaDiM, load_mvtec
from skcflow.base import upsample
from skcflow.cflow import aggregate_likelihoods
from skcflow.metrics import aupro, image_auroc, pixel_auroc

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CATEGORIES = {"bottle": DATA / "mvtec_ad", "magnetic_tile": DATA / "mtd"}


def gaussian_log_likelihood(model, features):
    """Per-dimension log-likelihood ``(N, H, W)`` under a fitted PaDiM's Gaussians."""
    _, height, width = model.feature_shapes_[0]
    dim = len(model.channels_)
    log_det_precision = torch.linalg.slogdet(model.precision_.double())[1]
    squared = torch.cat([model._squared_distances(features[i : i + 16]).double()
                         for i in range(0, len(features), 16)])
    log_p = 0.5 * (log_det_precision - squared - dim * math.log(2 * math.pi)) / dim
    return log_p.view(len(features), height, width)


def flow_log_likelihood(model, level, features):
    fmap = features.maps[level]
    return torch.cat([
        model._log_prob(level, chunk.permute(0, 2, 3, 1)).view(len(chunk), *fmap.shape[-2:])
        for chunk in fmap.split(16)
    ]).double()


def row(category, model, level, test, maps):
    maps = maps.float().numpy()
    scores = maps.reshape(len(maps), -1).max(1)
    return (f"| {category} | {model} | {level} | {image_auroc(test.target, scores):.4f} | "
            f"{pixel_auroc(test.masks, maps):.4f} | {aupro(test.masks, maps):.4f} |")


def evaluate(category, image_size, seed):
    root = CATEGORIES[category]
    train = load_mvtec(root, category, split="train", image_size=image_size)
    test = load_mvtec(root, category, split="test", image_size=image_size)
    extractor = FeatureExtractor(image_size=image_size).fit()
    train_features, test_features = extractor.transform(train.images), extractor.transform(test.images)
    size = test_features.input_size
    flow = CFlowAD(random_state=seed).fit(train_features)
    rows, gaussian_maxima, gaussian_test = [], [], []
    with torch.inference_mode():
        for level in range(len(train_features.maps)):
            one = [Features([f.maps[level]], f.input_size) for f in (train_features, test_features)]
            gaussian = PaDiM(n_features=10**6, random_state=seed).fit(one[0])
            gaussian_maxima.append(float(gaussian_log_likelihood(gaussian, one[0]).max()))
            gaussian_test.append(gaussian_log_likelihood(gaussian, one[1]))
            name = f"{level} ({train_features.shapes[level][0]} channels)"
            rows.append(row(category, "CFlowAD", name, test,
                            upsample(-flow_log_likelihood(flow, level, test_features), size)))
            rows.append(row(category, "Gaussian per position", name, test,
                            upsample(-gaussian_test[-1], size)))
            print(*rows[-2:], sep="\n", flush=True)
        rows.append(row(category, "CFlowAD", "all, aggregated", test,
                        torch.from_numpy(flow.anomaly_map(test_features))))
        rows.append(row(category, "Gaussian per position", "all, aggregated", test,
                        aggregate_likelihoods(gaussian_test, gaussian_maxima, size)))
    print(*rows[-2:], sep="\n", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", default="bottle,magnetic_tile")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "levels.md"))
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: real data not found at {DATA}")
        return 0
    rows = []
    for category in args.categories.split(","):
        rows += evaluate(category, args.image_size, args.seed)
    write_results(args.out, "Accuracy per pyramid level, and after CFLOW-AD's aggregation", (
        f"Written by `benchmarks/bench_levels.py`; efficientnet_lite0 features at "
        f"{args.image_size} px, CFlowAD with default parameters (random_state={args.seed}). "
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
