"""Accuracy, fit time, speed and size of the detectors on ../shared/data.

For each category, features are extracted once (the encoder is shared), then
each detector is fitted on train/good and evaluated on the test split with
image AUROC, pixel AUROC and AUPRO. CFlowAD gets the synthetic defects its
``n_levels="auto"`` chooses on, as a pipeline gives them; their pasting and
encoding count in its fit time. Inference images/s is end to end: the
encoder's time on the test set plus the detector's, measured in the same run,
after the detector's first batch (timed apart: CFlowAD builds its decoders'
graphs at its first maps).
Each category runs with the extractor's default precision (float32 on a
CPU) and with bfloat16 features; a second table gives the differences. Writes benchmarks/results/accuracy.md.

Usage: python benchmarks/bench_accuracy.py [--models cflow,padim,spade]
           [--categories bottle,magnetic_tile] [--image-size 256]
"""

import sys

import torch
from _common import category_parser, data_missing, load_category, markdown_sections, timed, write_results

import skcflow
from skcflow._device import resolve_dtype
from skcflow.metrics import aupro, image_auroc, pixel_auroc
from skcflow.pipeline import synthetic_defects

MODELS = {"cflow": "CFlowAD", "padim": "PaDiM", "spade": "SPADE"}


METRICS = ["image AUROC", "pixel AUROC", "AUPRO"]


def evaluate(category, models, image_size, seed, precision):
    train, test, train_features, test_features, encode_seconds = load_category(category, image_size, precision)
    # The extractor load_category encoded with (deterministic: the same features).
    extractor = skcflow.FeatureExtractor(image_size=image_size, inference_dtype=precision).fit()
    n_test = len(test.images)
    rows = [{
        "category": category, "encoder precision": precision, "model": "encoder only",
        "inference images/s": n_test / encode_seconds,
    }]
    for name in models:
        model = getattr(skcflow, MODELS[name])()
        if "random_state" in model.get_params():
            model.set_params(random_state=seed)
        _, fit_seconds = timed(lambda: model.fit(train_features, **synthetic_defects(
            model, extractor.transform, train.images, train_features)))
        # The first batch's maps, cold: CFlowAD builds its decoders' graphs there.
        _, first_seconds = timed(model.anomaly_map, test_features[: model.batch_size])
        maps, map_seconds = timed(model.anomaly_map, test_features)
        scores = -model.score_samples(test_features)
        rows.append({
            "category": category, "encoder precision": precision, "model": type(model).__name__,
            "levels": levels_text(model),
            "image AUROC": image_auroc(test.target, scores),
            "pixel AUROC": pixel_auroc(test.masks, maps),
            "AUPRO": aupro(test.masks, maps),
            "fit s": fit_seconds,
            "inference images/s": n_test / (encode_seconds + map_seconds),
            "first maps s": first_seconds,
            "fitted MB": model.model_size_bytes_ / 1e6,
        })
        print(rows[-1], flush=True)
    return rows


def levels_text(model):
    """CFlowAD's modelled levels, and the synthetic pixel AUROC of each candidate."""
    if not hasattr(model, "levels_"):
        return ""
    chosen = f"{len(model.levels_)}"
    if getattr(model, "level_selection_", None):
        chosen += " (" + ", ".join(f"{k}: {score:.4f}" for k, score in model.level_selection_) + ")"
    return chosen


COLUMNS = ["category", "encoder precision", "model", "levels", *METRICS, "fit s", "inference images/s",
           "first maps s", "fitted MB"]


def precision_effects(rows, other):
    """Per category and model: the metrics with ``other`` features less float32's."""
    exact = {(r["category"], r["model"]): r for r in rows if r["encoder precision"] == "float32"}
    return [
        {"category": r["category"], "model": r["model"],
         **{f"{m}, {other} - float32": f"{r[m] - exact[r['category'], r['model']][m]:+.4f}" for m in METRICS},
         "inference images/s, x float32": f"{r['inference images/s'] / exact[r['category'], r['model']]['inference images/s']:.2f}"}
        for r in rows if r["encoder precision"] == other and "AUPRO" in r
    ]


def main(argv=None):
    parser = category_parser(__doc__.splitlines()[0], "accuracy.md")
    parser.add_argument("--models", default="cflow,padim,spade")
    args = parser.parse_args(argv)
    if data_missing():
        return 0
    models = [m for m in args.models.split(",") if m]
    default = resolve_dtype("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    precisions = list(dict.fromkeys([default, "float32", "bfloat16"]))
    rows = []
    for category in args.categories.split(","):
        for precision in precisions:
            rows += evaluate(category, models, args.image_size, args.seed, precision)
    sections = [(f"Default parameters (the encoder's default precision here: {default})",
                 [{c: r.get(c, "") for c in COLUMNS} for r in rows])]
    sections.append(("Effect of the encoder's precision: bfloat16 features against float32 ones",
                     precision_effects(rows, "bfloat16")))
    write_results(args.out, "Accuracy on ../shared/data", (
        f"Written by `benchmarks/bench_accuracy.py`; efficientnet_lite0 features at "
        f"{args.image_size} px, default parameters (the extractor's precision as stated), "
        f"random_state={args.seed}. Inference images/s is end to end (encoder + detector) on "
        "the test split, after the detector's first batch (first maps s: the maps of the first "
        "batch_size test images, the first call after fit, graphs built there included); "
        "fit s is the detector's fit on the training features (for CFlowAD, "
        "with the synthetic defects of n_levels='auto': pasted on up to 64 training images "
        "and encoded). Levels: CFlowAD's modelled levels, and in brackets each candidate "
        "number of levels with its pixel AUROC on the synthetic defects."
    ), markdown_sections(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
