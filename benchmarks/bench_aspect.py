"""Square frames against aspect-keeping ones on the magnetic tiles.

MTD's tiles come in many sizes and aspect ratios (width / height from 0.36
to 2.7, median 0.85). Three frames of about 65,000 pixels are compared, for
CFlowAD and PaDiM with default parameters:

- ``256x256``, stretched: every tile squashed to a square (the default);
- ``272x240``, stretched: the median tile's aspect ratio, so that a typical
  tile keeps its shape and the others are distorted less;
- ``256x256``, letterboxed (``keep_aspect=True``): every tile keeps its
  aspect ratio, scaled to fit and centred on zero padding.

So that the frames are compared on the same ground truth, each map is taken
back to its tile's own pixel grid (``skcflow.geometry.restore``: padding cut
off, resized) and then resized to 256 x 256, where every configuration is
evaluated against the same 256 x 256 masks. Inference images/s is end to
end (encoder + detector) on the test split. Writes
benchmarks/results/aspect.md.

Usage: python benchmarks/bench_aspect.py [--seed 0]
"""

import argparse
import sys

import numpy as np
from _common import CATEGORIES, RESULTS, data_missing, markdown_table, timed, write_results

from skcflow import CFlowAD, FeatureExtractor, PaDiM, load_mvtec
from skcflow.geometry import restore
from skcflow.metrics import aupro, image_auroc, pixel_auroc

FRAMES = [("256x256, stretched", (256, 256), False),
          ("272x240 (median aspect), stretched", (272, 240), False),
          ("256x256, letterboxed", (256, 256), True)]
EVALUATION = (256, 256)
COLUMNS = ["frame", "model", "image AUROC", "pixel AUROC", "AUPRO", "fit s",
           "inference images/s"]


def on_evaluation_grid(maps, sizes, frame, keep_aspect):
    """Frame maps back on each tile's grid, then on the common 256 x 256 one."""
    out = np.empty((len(maps), *EVALUATION), np.float32)
    for i, size in enumerate(sizes):
        own = restore(maps[i : i + 1], size, frame, keep_aspect)
        out[i] = restore(own, EVALUATION, size, keep_aspect=False)[0]
    return out


def evaluate(name, frame, keep_aspect, masks, seed):
    root = CATEGORIES["magnetic_tile"]
    train = load_mvtec(root, "magnetic_tile", "train", image_size=frame, keep_aspect=keep_aspect)
    test = load_mvtec(root, "magnetic_tile", "test", image_size=frame, keep_aspect=keep_aspect)
    extractor = FeatureExtractor(image_size=frame, keep_aspect=keep_aspect).fit(train.images)
    train_features = extractor.transform(train.images)
    test_features, encode_seconds = timed(extractor.transform, test.images)
    rows = []
    for model in (CFlowAD(random_state=seed), PaDiM(random_state=seed)):
        _, fit_seconds = timed(model.fit, train_features)
        maps, map_seconds = timed(model.anomaly_map, test_features)
        scores = -model.score_samples(test_features)
        grid = on_evaluation_grid(maps, test.sizes, frame, keep_aspect)
        rows.append({
            "frame": name, "model": type(model).__name__,
            "image AUROC": image_auroc(test.target, scores),
            "pixel AUROC": pixel_auroc(masks, grid),
            "AUPRO": aupro(masks, grid),
            "fit s": fit_seconds,
            "inference images/s": len(test.images) / (encode_seconds + map_seconds),
        })
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "aspect.md"))
    args = parser.parse_args(argv)
    if data_missing():
        return 0
    masks = load_mvtec(CATEGORIES["magnetic_tile"], "magnetic_tile", "test",
                       image_size=EVALUATION).masks
    rows = []
    for name, frame, keep_aspect in FRAMES:
        rows += evaluate(name, frame, keep_aspect, masks, args.seed)
    write_results(args.out, "Square and aspect-keeping frames on MTD magnetic tiles", (
        "Written by `benchmarks/bench_aspect.py`; efficientnet_lite0 features, default "
        f"CFlowAD and PaDiM (random_state={args.seed}), fitted on the 761 training tiles and "
        "evaluated on the 583 test tiles. Every configuration's maps are taken back to each "
        "tile's own grid, then resized to 256 x 256 and evaluated against the same 256 x 256 "
        "masks. Inference images/s is end to end (encoder + detector)."
    ), markdown_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
