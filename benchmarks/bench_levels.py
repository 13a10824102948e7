"""Where CFlowAD's accuracy comes from: each pyramid level, and their aggregation.

For each category, CFlowAD is fitted on the training features with its
defaults (there, with no synthetic defects to choose on, ``n_levels='auto'``
models the two coarsest levels; ``accuracy.md`` measures its choice) and
with one default changed at a time: all three levels of the efficientnet_lite0 pyramid
(``n_levels=None``), the features as they are (``neighborhood=1``), no
whitening (``whiten=False``), and the paper's settings together
(``whiten=False, neighborhood=1, n_levels=None, n_coupling_layers=8,
hidden_dim='reference', normalization='level', image_score='map'``). For each modelled level,
the level's own map (minus the log-likelihood per dimension, upsampled
bilinearly, no smoothing; image score: its maximum) is evaluated, then the
model's own maps and image scores ('aggregated': the sum of calibrated
probabilities, the image score from the coarsest level). For the default
and ``n_levels=None`` fits, the same fitted model is also evaluated with the
image score of the map's maximum, with each level's probabilities relative
to the best training vector at each position (``normalization='position'``,
the previous default) or of the level (``'level'``, the paper's code), and
with its maps smoothed by a Gaussian of 2 or 4 input pixels (as PaDiM's and
SPADE's; image scores unchanged), and with the calibrated ``-log P`` of the levels summed (a product of
probabilities) or maximised instead of the paper's sum of probabilities.
The reference point is a Gaussian per position on the same
neighbourhood-averaged features (mean and covariance + 0.01 I: PaDiM's model
without its channel subset or smoothing; in-sample maxima), per level and
aggregated. Last, ``n_levels`` in {2, None} is chosen from good images alone:
fitted on 80% of the training images, scored on the other 20% as they are
and with a pasted synthetic defect each
(``skcflow.model_selection.synthetic_split``), beside each candidate's real
test metrics after a fit on all training images. Then ``n_levels='auto'``
as a pipeline fits it (synthetic defects pasted on up to 64 training images,
scored beside the images themselves, with no held-out images), at
``random_state`` 0 to 4, each a fit with its own draw of the defects: the
levels it keeps and the real test metrics, with each training precision
(``training_dtype``: the default's choice on this CPU, and float32 where
that is not float32) and with the previous default of 4 coupling layers
instead of 2 (``n_coupling_layers``), fitted one after the other. Writes
benchmarks/results/levels.md.

Usage: python benchmarks/bench_levels.py [--categories bottle,magnetic_tile]
"""

import itertools
import math
import sys
import time

import torch
from _common import category_parser, data_missing, load_category, markdown_table, write_results

from skcflow import CFlowAD, FeatureExtractor, Features, PaDiM
from skcflow._device import resolve_training_dtype
from skcflow.base import _along_axes, upsample
from skcflow.cflow import aggregate_likelihoods
from skcflow.geometry import blur_matrix
from skcflow.metrics import aupro, get_scorer, image_auroc, pixel_auroc
from skcflow.model_selection import synthetic_split
from skcflow.pipeline import synthetic_defects

AUTO_SEEDS = range(5)
# CFlowAD's previous default depth, beside the current one.
PREVIOUS_LAYERS = 4

VARIANTS = {
    "CFlowAD": {},
    "CFlowAD, n_levels=None": {"n_levels": None},
    "CFlowAD, neighborhood=1": {"neighborhood": 1},
    "CFlowAD, whiten=False": {"whiten": False},
    "CFlowAD, paper's settings": {"whiten": False, "neighborhood": 1, "n_levels": None,
                                  "n_coupling_layers": 8, "hidden_dim": "reference",
                                  "normalization": "level", "image_score": "map"},
}

# Map smoothing as PaDiM's and SPADE's, in input pixels.
SIGMAS = (2, 4)


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


def row(category, model, level, test, maps, scores=None):
    maps = maps.float().numpy()
    scores = maps.reshape(len(maps), -1).max(1) if scores is None else scores
    line = (f"| {category} | {model} | {level} | {image_auroc(test.target, scores):.4f} | "
            f"{pixel_auroc(test.masks, maps):.4f} | {aupro(test.masks, maps):.4f} |")
    print(line, flush=True)
    return line


def model_row(category, name, level, test, model, features):
    """The row of a fitted CFlowAD's own maps and image scores."""
    return row(category, name, level, test, torch.from_numpy(model.anomaly_map(features)),
               -model.score_samples(features))


def calibrated(model, log_probs):
    """Each level's ``-log P`` of CFlowAD's calibrated normalisation, upsampled."""
    size = model.frame_size_
    return [upsample(((m.max() - lp) / (m.max() - mean)).clamp(min=0), size)
            for lp, m, mean in zip(log_probs, model.log_prob_max_, model.log_prob_mean_)]


def aggregations(category, name, model, test, features, log_probs):
    """Rows of the fitted model's aggregation, and of the alternatives to it."""
    rows = [model_row(category, name, "aggregated", test, model, features)]
    defaults = model.get_params()
    for params in ({"image_score": "map"}, {"normalization": "position", "image_score": "map"},
                   {"normalization": "level", "image_score": "map"}):
        model.set_params(**params)
        text = ", ".join(f"{k}={v!r}" for k, v in params.items())
        rows.append(model_row(category, name, f"aggregated, {text}", test, model, features))
    model.set_params(**{k: defaults[k] for k in ("normalization", "image_score")})
    maps, scores = torch.from_numpy(model.anomaly_map(features)), -model.score_samples(features)
    for sigma in SIGMAS:
        smoothed = _along_axes(maps, *(blur_matrix(n, sigma) for n in maps.shape[1:]))
        rows.append(row(category, name, f"aggregated, smoothed (sigma={sigma} px)", test, smoothed, scores))
    levels = torch.stack(calibrated(model, log_probs))
    rows.append(row(category, name, "sum of calibrated -log P (image score: map maximum)", test, levels.sum(0)))
    rows.append(row(category, name, "largest calibrated -log P (image score: map maximum)", test,
                    levels.amax(0)))
    return rows


def evaluate(category, data, seed):
    _, test, train_features, test_features, _ = data
    size = test_features.input_size
    rows = []
    for name, params in VARIANTS.items():
        model = CFlowAD(random_state=seed, **params).fit(train_features)
        with torch.inference_mode():
            log_probs = flow_log_likelihoods(model, test_features)
            for level, log_prob in enumerate(log_probs):
                rows.append(row(category, name, level_name(model, test_features, level), test,
                                upsample(-log_prob, size)))
        if params.keys() <= {"n_levels"}:
            rows += aggregations(category, name, model, test, test_features, log_probs)
        else:
            rows.append(model_row(category, name, "aggregated", test, model, test_features))
        if not params:
            default = model
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
        rows.append(row(category, "Gaussian per position", "aggregated, normalization='position'", test,
                        aggregate_likelihoods(log_probs, maxima, size)))
    return rows


def selection(category, data, image_size, seed):
    """``n_levels`` chosen on synthetic defects pasted on held-out good images."""
    train, test, train_features, test_features, _ = data
    X, y, cv = synthetic_split(train.images, validation=0.2, random_state=seed)
    fit_rows, validation_rows = next(cv.split(X, y))
    extractor = FeatureExtractor(image_size=image_size).fit(train.images)
    fit_features, validation_features = extractor.transform(X[fit_rows]), extractor.transform(X[validation_rows])
    scorers = {name: get_scorer(name) for name in ("pixel_auroc", "aupro")}
    candidates = []
    for n_levels in (2, None):
        synthetic = CFlowAD(n_levels=n_levels, random_state=seed).fit(fit_features)
        model = CFlowAD(n_levels=n_levels, random_state=seed).fit(train_features)
        maps = model.anomaly_map(test_features)
        candidates.append({
            "category": category, "n_levels": str(n_levels),
            **{f"synthetic {name}": scorer(synthetic, validation_features, y[validation_rows])
               for name, scorer in scorers.items()},
            "real image AUROC": image_auroc(test.target, -model.score_samples(test_features)),
            "real pixel AUROC": pixel_auroc(test.masks, maps), "real AUPRO": aupro(test.masks, maps),
        })
        print(candidates[-1], flush=True)
    for name in scorers:
        best = max(candidates, key=lambda c: c[f"synthetic {name}"])
        for candidate in candidates:
            candidate[f"chosen by synthetic {name}"] = "yes" if candidate is best else ""
    return candidates


def auto_choices(category, data, image_size):
    """``n_levels='auto'``'s choice, fitted as a pipeline does, at several seeds."""
    train, test, train_features, test_features, _ = data
    extractor = FeatureExtractor(image_size=image_size).fit()
    default = resolve_training_dtype("auto", torch.device("cpu"))
    layers = CFlowAD().n_coupling_layers
    # The default, its float32 training, and the previous default depth.
    settings = list(dict.fromkeys([(default, layers), ("float32", layers), (default, PREVIOUS_LAYERS)]))
    rows = []
    for seed, (training, n_layers) in itertools.product(AUTO_SEEDS, settings):
        model = CFlowAD(random_state=seed, training_dtype=training, n_coupling_layers=n_layers)
        start = time.perf_counter()
        model.fit(train_features, **synthetic_defects(model, extractor.transform, train.images, train_features))
        fit_seconds = time.perf_counter() - start
        maps = model.anomaly_map(test_features)
        rows.append({
            "category": category, "random_state": seed,
            "training_dtype": training + (" (default)" if training == default else ""),
            "n_coupling_layers": n_layers,
            "levels kept": len(model.levels_),
            **{f"synthetic pixel AUROC, {k} levels": score for k, score in model.level_selection_},
            "real image AUROC": image_auroc(test.target, -model.score_samples(test_features)),
            "real pixel AUROC": pixel_auroc(test.masks, maps), "real AUPRO": aupro(test.masks, maps),
            "fit s (defects included)": fit_seconds,
        })
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    args = category_parser(__doc__.splitlines()[0], "levels.md").parse_args(argv)
    if data_missing():
        return 0
    rows, choices, autos = [], [], []
    for category in args.categories.split(","):
        data = load_category(category, args.image_size)
        rows += evaluate(category, data, args.seed)
        choices += selection(category, data, args.image_size, args.seed)
        autos += auto_choices(category, data, args.image_size)
    description = __doc__.split("\n\n", 1)[1].split("Writes")[0].strip()
    write_results(args.out, "Accuracy per pyramid level, and after CFLOW-AD's aggregation", description, [
        "| category | density model | level | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "## n_levels chosen from good images alone (synthetic defects)",
        "",
        *markdown_table(choices, list(choices[0])),
        "",
        "## n_levels='auto' in a pipeline, at five seeds, each training precision and two depths",
        "",
        *markdown_table(autos, list(autos[0])),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
