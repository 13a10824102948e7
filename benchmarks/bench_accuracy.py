"""Accuracy, fit time, speed and size of the detectors on ../shared/data.

For each category, features are extracted once (the encoder is shared), then
each detector is fitted on train/good and evaluated on the test split with
image AUROC, pixel AUROC and AUPRO. Inference images/s is end to end: the
encoder's time on the test set plus the detector's, measured in the same run.
Writes a markdown table to benchmarks/results/accuracy.md.

Usage: python benchmarks/bench_accuracy.py [--models cflow,padim,spade]
           [--categories bottle,magnetic_tile] [--image-size 256]
"""

import sys

from _common import category_parser, data_missing, load_category, markdown_table, timed, write_results

import skcflow
from skcflow.metrics import aupro, image_auroc, pixel_auroc

MODELS = {"cflow": "CFlowAD", "padim": "PaDiM", "spade": "SPADE"}


def evaluate(category, models, image_size, seed):
    train, test, train_features, test_features, encode_seconds = load_category(category, image_size)
    n_test = len(test.images)
    rows = [{
        "category": category, "model": "encoder only",
        "inference images/s": n_test / encode_seconds,
    }]
    for name in models:
        model = getattr(skcflow, MODELS[name])()
        if "random_state" in model.get_params():
            model.set_params(random_state=seed)
        _, fit_seconds = timed(model.fit, train_features)
        maps, map_seconds = timed(model.anomaly_map, test_features)
        scores = -model.score_samples(test_features)
        rows.append({
            "category": category, "model": type(model).__name__,
            "image AUROC": image_auroc(test.target, scores),
            "pixel AUROC": pixel_auroc(test.masks, maps),
            "AUPRO": aupro(test.masks, maps),
            "fit s": fit_seconds,
            "inference images/s": n_test / (encode_seconds + map_seconds),
            "fitted MB": model.model_size_bytes_ / 1e6,
        })
        print(rows[-1], flush=True)
    return rows


COLUMNS = ["category", "model", "image AUROC", "pixel AUROC", "AUPRO", "fit s",
           "inference images/s", "fitted MB"]


def main(argv=None):
    parser = category_parser(__doc__.splitlines()[0], "accuracy.md")
    parser.add_argument("--models", default="cflow,padim,spade")
    args = parser.parse_args(argv)
    if data_missing():
        return 0
    models = [m for m in args.models.split(",") if m]
    rows = []
    for category in args.categories.split(","):
        rows += evaluate(category, models, args.image_size, args.seed)
    write_results(args.out, "Accuracy on ../shared/data", (
        f"Written by `benchmarks/bench_accuracy.py`; efficientnet_lite0 features at "
        f"{args.image_size} px, default detector parameters, random_state={args.seed}. "
        "Inference images/s is end to end (encoder + detector) on the test split."
    ), [
        *markdown_table(rows, COLUMNS),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
