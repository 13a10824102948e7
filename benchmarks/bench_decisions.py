"""Decisions without defect samples: p-value calibration, and selection on synthetic defects.

For each category of ../shared/data (efficientnet_lite0 at 256 px):

1. Calibration: CFlowAD, PaDiM and SPADE (default parameters,
   random_state=0) fitted on all training images; on the good test images,
   which no model was fitted on, the share with a p-value of normality at
   most ``alpha`` (``score_pvalues``) is the observed false-alarm rate, for
   alpha = 0.05 and 0.10. The conformal guarantee is ``P(p <= alpha) <=
   alpha``. The test (``skcflow.calibration.false_alarm_test``) gives the
   chance of that many false alarms or more if the guarantee held with
   equality: the images share one model and one set of reference scores,
   so the count is beta-binomial, not binomial (a binomial p is shown
   beside it). Twelve such tests (3 detectors x 2 categories x 2 levels)
   are one family: a guarantee is contradicted where Holm's adjusted p
   (family-wise error 0.05) is below 0.05.
2. Selection: six candidates (the three detectors, and CFlowAD over
   ``n_levels`` in {2, None} x ``neighborhood`` in {1, 3}) are scored twice:
   on the real test set after a fit on all training images, and on a
   synthetic validation set (``skcflow.model_selection.synthetic_split``: 20%
   of the training images kept out of the fit, as they are and with a
   pasted synthetic defect each) after a fit on the other 80%. The
   agreement is the Spearman rank correlation of the two scores over the
   candidates, per metric, and whether both choose the same candidate.

Writes benchmarks/results/decisions.md.

Usage: python benchmarks/bench_decisions.py [--categories bottle,magnetic_tile] [--parts calibration]
"""

import sys

import numpy as np
from _common import CATEGORIES, category_parser, data_missing, load_category, markdown_sections, write_results
from scipy.stats import binom, spearmanr

from skcflow import SPADE, CFlowAD, FeatureExtractor, PaDiM
from skcflow.calibration import false_alarm_test
from skcflow.metrics import aupro, image_auroc, pixel_auroc
from skcflow.model_selection import synthetic_split

CANDIDATES = {
    "CFlowAD": lambda seed: CFlowAD(random_state=seed),
    "CFlowAD, n_levels=None": lambda seed: CFlowAD(n_levels=None, random_state=seed),
    "CFlowAD, neighborhood=1": lambda seed: CFlowAD(neighborhood=1, random_state=seed),
    "CFlowAD, n_levels=None, neighborhood=1": lambda seed: CFlowAD(n_levels=None, neighborhood=1,
                                                                   random_state=seed),
    "PaDiM": lambda seed: PaDiM(random_state=seed),
    "SPADE": lambda seed: SPADE(),
}
DEFAULTS = ("CFlowAD", "PaDiM", "SPADE")
METRICS = ("image AUROC", "pixel AUROC", "AUPRO")
ALPHAS = (0.05, 0.10)


def metrics(model, features, target, masks):
    maps = model.anomaly_map(features)
    return {"image AUROC": image_auroc(target, -model.score_samples(features)),
            "pixel AUROC": pixel_auroc(masks, maps), "AUPRO": aupro(masks, maps)}


def evaluate(category, image_size, seed, select=True):
    train, test, train_features, test_features, _ = load_category(category, image_size)
    normal = test.target == 0
    calibration, selection = [], []
    if select:
        X, y, cv = synthetic_split(train.images, validation=0.2, random_state=seed)
        fit_rows, validation_rows = next(cv.split(X, y))
        extractor = FeatureExtractor(image_size=image_size).fit(train.images)
        synthetic_features = extractor.transform(X[validation_rows])
        fit_features = extractor.transform(X[fit_rows])
        synthetic_target = y[validation_rows].reshape(len(validation_rows), -1).any(1).astype(int)
    for name, make in CANDIDATES.items():
        if not select and name not in DEFAULTS:
            continue
        model = make(seed).fit(train_features)
        if name in DEFAULTS:
            p = model.score_pvalues(test_features[np.flatnonzero(normal)])
            for alpha in ALPHAS:
                alarms = int((p <= alpha).sum())
                calibration.append({
                    "category": category, "model": name, "alpha": f"{alpha:.2f}",
                    "good test images": int(normal.sum()), "false alarms": alarms,
                    "observed rate": f"{alarms / normal.sum():.3f}",
                    "test p": false_alarm_test(alarms, int(normal.sum()), alpha, len(model.training_scores_)),
                    "binomial p": float(binom(int(normal.sum()), alpha).sf(alarms - 1)),
                })
                print(calibration[-1], flush=True)
        if not select:
            continue
        real = metrics(model, test_features, test.target, test.masks)
        model = make(seed).fit(fit_features)
        synthetic = metrics(model, synthetic_features, synthetic_target, y[validation_rows])
        selection.append({"category": category, "candidate": name,
                          **{f"real {k}": v for k, v in real.items()},
                          **{f"synthetic {k}": v for k, v in synthetic.items()}})
        print(selection[-1], flush=True)
    if not select:
        return calibration, [], None
    agreement = {"category": category, "fit / validation images": f"{len(fit_rows)} / {len(validation_rows)}"}
    for metric in METRICS:
        real = [row[f"real {metric}"] for row in selection]
        synthetic = [row[f"synthetic {metric}"] for row in selection]
        agreement[f"Spearman, {metric}"] = float(spearmanr(real, synthetic).statistic)
    for metric in ("image AUROC", "AUPRO"):
        best_real = max(selection, key=lambda row: row[f"real {metric}"])["candidate"]
        best_synthetic = max(selection, key=lambda row: row[f"synthetic {metric}"])["candidate"]
        agreement[f"chosen by {metric}: real / synthetic"] = f"{best_real} / {best_synthetic}"
    print(agreement, flush=True)
    return calibration, selection, agreement


def main(argv=None):
    parser = category_parser(__doc__.splitlines()[0], "decisions.md")
    parser.add_argument("--parts", default="calibration,selection",
                        help="calibration alone fits the three default detectors only")
    args = parser.parse_args(argv)
    if data_missing():
        return 0
    select = "selection" in args.parts.split(",")
    calibration, selection, agreement = [], [], []
    for category in args.categories.split(","):
        if category not in CATEGORIES:
            continue
        c, s, a = evaluate(category, args.image_size, args.seed, select)
        calibration += c
        selection += s
        agreement += [a] if a else []
    adjusted = holm([row["test p"] for row in calibration])
    for row, p in zip(calibration, adjusted):
        row["Holm p"] = p
        row["contradicted"] = "yes" if p < 0.05 else "no"
        row["test p"], row["binomial p"], row["Holm p"] = (f"{row[k]:.3f}" for k in ("test p", "binomial p", "Holm p"))
    description = __doc__.split("\n\n", 1)[1].split("Writes")[0].strip()
    sections = [("Calibration of the p-values on the good test images", calibration)]
    if select:
        sections += [("Candidates scored on real and on synthetic defects", selection),
                     ("Agreement of the synthetic ranking with the real one", agreement)]
    write_results(args.out, "Decisions without defect samples", description, markdown_sections(sections))
    return 0


def holm(pvalues):
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    order = np.argsort(pvalues)
    adjusted, running = np.empty(len(pvalues)), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted.tolist()


if __name__ == "__main__":
    sys.exit(main())
