"""Training sets of any size: memory and time of streaming and in-memory fits, and many categories.

1. Memory: PaDiM and CFlowAD (default parameters, efficientnet_lite0 at
   256 px) fitted on growing sets of MTD magnetic-tile training images
   (100, all 761, and 3,000 made of the 761 and their horizontal,
   vertical and double flips), each fit in a process of its own so that its
   peak resident memory (``ru_maxrss``) is its own: streamed (a
   ``FeatureStream`` reading 32 files at a time; two passes over the files),
   and, for comparison, in memory (all images loaded and encoded, then
   ``fit(Features)``) up to the 761.
2. Accuracy: the default CFlowAD fitted in memory and streamed (its
   reservoir of 131,072 vectors per level) on bottle and magnetic_tile, with
   the same random_state.
3. Many categories: ``skcflow compare --category all`` over bottle and
   magnetic_tile (CFlowAD and PaDiM), wall time on one and on two workers of
   a local Dask cluster.

Writes benchmarks/results/scale.md.

Usage: python benchmarks/bench_scale.py
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import CATEGORIES, DATA, RESULTS, data_missing, markdown_sections, write_results

SIZES = {"streamed": (100, 761, 3000), "in memory": (100, 761)}
FLIPS = (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1])


class Tiles:
    """The first ``n`` training tiles, flipped copies after the 761 originals,
    read 32 at a time: a re-iterable of image batches."""

    def __init__(self, n, frame=(256, 256)):
        root = CATEGORIES["magnetic_tile"] / "magnetic_tile" / "train" / "good"
        self.paths = sorted(root.iterdir())
        self.n, self.frame = n, frame

    def __iter__(self):
        from skcflow.readers import read_into_frame

        for start in range(0, self.n, 32):
            batch = []
            for i in range(start, min(start + 32, self.n)):
                image = read_into_frame(self.paths[i % len(self.paths)], self.frame)[0]
                batch.append(np.ascontiguousarray(FLIPS[i // len(self.paths)](image)))
            yield np.stack(batch)


def child(model, mode, n, reservoir=None):
    """Fit once and print the fit's seconds and this process's peak memory."""
    from skcflow import CFlowAD, FeatureExtractor, PaDiM
    from skcflow.streaming import FeatureStream

    detector = {"CFlowAD": CFlowAD, "PaDiM": PaDiM}[model](random_state=0)
    if reservoir:
        detector.set_params(reservoir_size=int(reservoir))
    extractor = FeatureExtractor().fit(next(iter(Tiles(32))))
    start = time.perf_counter()
    if mode == "in memory":
        detector.fit(extractor.transform(np.concatenate(list(Tiles(n)))))
    else:
        detector.fit(FeatureStream(extractor, Tiles(n)))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps({"seconds": seconds, "peak_gb": peak, "n": detector.n_train_samples_}))


def memory_rows(models):
    rows = []
    for model in models:
        runs = [(mode, n, None) for mode in ("in memory", "streamed") for n in SIZES[mode]]
        if model == "CFlowAD":
            # What the default reservoir's size buys.
            runs += [("streamed", n, 2 * 2**17) for n in (100, 3000)]
        base = {}
        for mode, n, reservoir in runs:
            command = [sys.executable, __file__, "--child", model, mode, str(n)] + ([str(reservoir)] if reservoir else [])
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            base.setdefault((mode, reservoir), measured["peak_gb"])
            rows.append({"model": model, "fit": mode, "training images": n,
                         "reservoir_size": reservoir or ("default" if model == "CFlowAD" else ""),
                         "peak RSS GB": f"{measured['peak_gb']:.2f}",
                         "x the 100-image fit": f"{measured['peak_gb'] / base[mode, reservoir]:.2f}",
                         "fit s (encoding included)": measured["seconds"]})
            print(rows[-1], flush=True)
    return rows


def accuracy_rows():
    from skcflow import CFlowAD, FeatureExtractor, load_mvtec
    from skcflow.metrics import aupro, image_auroc, pixel_auroc
    from skcflow.streaming import FeatureStream

    rows = []
    for category, root in CATEGORIES.items():
        train = load_mvtec(root, category, "train", image_size=256)
        test = load_mvtec(root, category, "test", image_size=256)
        extractor = FeatureExtractor().fit(train.images)
        features = extractor.transform(test.images)
        batches = [train.images[i : i + 32] for i in range(0, len(train.images), 32)]
        for mode, source in (("in memory", extractor.transform(train.images)),
                             ("streamed", FeatureStream(extractor, batches))):
            model = CFlowAD(random_state=0).fit(source)
            maps = model.anomaly_map(features)
            rows.append({"category": category, "CFlowAD fit": mode,
                         "image AUROC": image_auroc(test.target, -model.score_samples(features)),
                         "pixel AUROC": pixel_auroc(test.masks, maps), "AUPRO": aupro(test.masks, maps)})
            print(rows[-1], flush=True)
    return rows


def category_rows():
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for category, source in CATEGORIES.items():
            (root / category).symlink_to(source / category)
        for workers in (1, 2):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "skcflow", "compare", "--root", str(root),
                            "--category", "all", "--models", "cflow,padim", "--quiet",
                            "--backend", "dask", "--jobs", str(workers),
                            "--out", str(root / f"report{workers}")], check=True)
            rows.append({"workers": workers, "categories": len(CATEGORIES),
                         "wall s": time.perf_counter() - start})
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", metavar="MODEL MODE N [RESERVOIR]")
    parser.add_argument("--out", default=str(RESULTS / "scale.md"))
    parser.add_argument("--parts", default="memory,accuracy,categories")
    parser.add_argument("--models", default="PaDiM,CFlowAD", help="of the memory table")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), *args.child[3:])
        return 0
    if data_missing():
        return 0
    parts = args.parts.split(",")
    sections = []
    if "memory" in parts:
        sections.append(("Peak memory and fit time on growing training sets (MTD magnetic tiles)", memory_rows(args.models.split(","))))
    if "accuracy" in parts:
        sections.append(("Streaming against in-memory CFlowAD", accuracy_rows()))
    if "categories" in parts:
        sections.append(("Many categories: skcflow compare --category all on a local Dask cluster",
                         category_rows()))
    write_results(args.out, "Training sets of any size, and many categories", (
        "Written by `benchmarks/bench_scale.py`; efficientnet_lite0 at 256 px, default "
        f"parameters, random_state=0, data from {DATA}. Each memory row is a fit in a process "
        "of its own (peak resident memory of that process, torch and the encoder included); "
        "streamed fits read 32 files at a time and pass over them twice."
    ), markdown_sections(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
