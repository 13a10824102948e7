"""Compare CFlowAD, PaDiM and SPADE on MVTec AD bottle with GridSearchCV.

The three detectors share one FeatureExtractor, cached by the pipeline's
joblib memory, so features are extracted once per extractor setting; the
predefined split fits on train/good and scores on the test split with the
three scorers. Run from the project root:

    .venv/bin/python docs/compare_bottle.py [--image-size 128] [--max-iter 200]

It reads ../shared/data/mvtec_ad and prints ``cv_results_`` as a DataFrame.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
from sklearn.model_selection import GridSearchCV

from skcflow import SPADE, AnomalyPipeline, CFlowAD, FeatureExtractor, PaDiM, load_mvtec
from skcflow.metrics import get_scorer
from skcflow.model_selection import predefined_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_ad"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--max-iter", type=int, default=200)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"real data not found at {DATA}; nothing to compare.")
        return 0
    train = load_mvtec(DATA, "bottle", split="train", image_size=args.image_size)
    test = load_mvtec(DATA, "bottle", split="test", image_size=args.image_size)
    X, y, cv = predefined_split(train, test)

    pipe = AnomalyPipeline(
        [("features", FeatureExtractor(image_size=args.image_size)), ("detector", CFlowAD())],
        memory=tempfile.mkdtemp(prefix="skcflow-"),
    )
    grid = [
        {"detector": [CFlowAD(max_iter=args.max_iter, random_state=0)],
         "detector__n_coupling_layers": [4, 8]},
        {"detector": [PaDiM(random_state=0)], "detector__n_features": [50, 100]},
        {"detector": [SPADE()], "detector__k": [5]},
    ]
    scoring = {name: get_scorer(name) for name in ("image_auroc", "pixel_auroc", "aupro")}
    search = GridSearchCV(pipe, grid, scoring=scoring, refit="aupro", cv=cv)
    search.fit(X, y)

    results = pd.DataFrame(search.cv_results_)
    results["detector"] = results["param_detector"].map(lambda d: type(d).__name__)
    columns = ["detector", "params", "mean_test_image_auroc", "mean_test_pixel_auroc",
               "mean_test_aupro", "mean_fit_time", "mean_score_time"]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(results[columns].to_string(index=False))
    print("best:", search.best_params_)
    return 0


if __name__ == "__main__":
    sys.exit(main())
