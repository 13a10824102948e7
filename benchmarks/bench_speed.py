"""Inference speed and fit time: backbones, precision, workers, and a busy machine.

1. Backbones: the encoder alone and each detector end to end, at batch 1
   and 32, on ``--threads`` workers (``n_jobs``); the ratio is images/s over
   the encoder alone's. The paper's backbones run with random weights, for
   speed and size only; wide_resnet50_2 gets CFlowAD only (PaDiM's and
   SPADE's models would not fit in memory with all its channels).
2. Precision: efficientnet_lite0 with the encoder, and CFlowAD's decoders,
   in float32 and bfloat16 (``inference_dtype``); the encoder and the
   decoders as frozen graphs (the default) and operator by operator
   (``graph=False`` on both: the pipeline before the graphs).
3. Stages on workers: the encoder and CFlowAD's decoders (anomaly maps of
   features computed beforehand), each both ways, apart, on 1 and
   ``--threads`` workers.
4. A busy machine: CFlowAD's default fit on bottle's training features and
   end-to-end scoring, on an idle machine and beside one CPU-bound process
   per core that the benchmark starts and stops itself, for
   ``n_jobs=None`` (a worker per core) and 1; with the load average.

Configurations of a table run in one process, interleaved round by round,
so that the machine's noise hits them alike; images/s are medians over
rounds. Detectors of the first two tables are fitted on bottle's training
features when ../shared/data is present (else on synthetic images); their
speed does not depend on how long they trained, so CFlowAD trains briefly
there (its full fit time is in the third table and in accuracy.md).

Usage: python benchmarks/bench_speed.py [--threads 2] [--rounds 5]
           [--backbones efficientnet_lite0,resnet18,wide_resnet50_2] [--image-size 256]
           [--parts backbones,precision,workers,busy] [--out benchmarks/results/speed.md]
"""

import argparse
import contextlib
import copy
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from _common import CATEGORIES, RESULTS, markdown_sections, write_results

from skcflow import SPADE, CFlowAD, FeatureExtractor, PaDiM, load_mvtec, make_defects
from skcflow.cflow import CFlowMaps
from skcflow.flows import positional_encoding
from skcflow.threads import resolve_threads

BOTTLE = CATEGORIES["bottle"]


def training_images(image_size):
    if BOTTLE.is_dir():
        return load_mvtec(BOTTLE, "bottle", split="train", image_size=image_size).images, "bottle"
    return make_defects(n_train=60, n_test=0, image_size=image_size, random_state=0).train.images, \
        "synthetic"


class ReferenceCFlowAD(CFlowAD):
    """CFlowAD's decoders evaluated as the paper's code does: the "before".

    Every fiber carries its own positional encoding through the subnets'
    first layer, in a Python loop over batches of ``fiber_batch_size``
    fibers. Made from a CFlowAD with the paper's settings (``whiten=False``,
    ``neighborhood=1``, every level):
    same parameters, same maps up to rounding, so the speed-up of CFlowAD's
    exact rewrites is measured side by side.
    """

    @classmethod
    def like(cls, fitted):
        # Operator by operator, as the paper's code runs.
        reference = cls(**{**fitted.get_params(), "graph": False})
        reference.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
        return reference

    def _maps(self, with_maxima=True):
        maps = super()._maps(with_maxima)
        maps.__class__, maps.fiber_batch_size = ReferenceMaps, self.fiber_batch_size
        maps.condition_dim = self.condition_dim
        return maps


class ReferenceMaps(CFlowMaps):
    """:class:`CFlowMaps` with a positional encoding per fiber, in batches."""

    def log_prob(self, i, fmap, leave_one_out=None):
        n_images, dim, height, width = fmap.shape
        encoding = positional_encoding(self.condition_dim, height, width).to(fmap.device)
        flow = self.flows[i]
        fibers = fmap.permute(0, 2, 3, 1).reshape(-1, dim).split(self.fiber_batch_size)
        conditions = encoding.repeat(n_images, 1).split(self.fiber_batch_size)
        return torch.cat([
            flow.log_prob(x, flow.condition(c)) for x, c in zip(fibers, conditions)
        ]).view(n_images, height, width)


PAPER = "CFlowAD, paper's settings"
PAPER_SETTINGS = dict(whiten=False, n_levels=None, neighborhood=1, max_dims=None, n_coupling_layers=8,
                      hidden_dim="reference", normalization="level", image_score="map")
PAPER_REFERENCE = "CFlowAD, paper's settings, reference decoders (before)"


def detectors(backbone, train_features, n_jobs):
    common = {"device": "cpu", "n_jobs": n_jobs}
    fitted = {"CFlowAD": CFlowAD(max_iter=20, random_state=0, **common).fit(train_features)}
    if backbone == "wide_resnet50_2":
        return fitted
    paper = CFlowAD(random_state=0, max_iter=20, **PAPER_SETTINGS, **common).fit(train_features)
    return {
        **fitted,
        "CFlowAD, all channels (max_dims=None)": CFlowAD(max_iter=20, max_dims=None, random_state=0,
                                                         **common).fit(train_features),
        PAPER: paper,
        PAPER_REFERENCE: ReferenceCFlowAD.like(paper),
        "PaDiM": PaDiM(random_state=0, **common).fit(train_features),
        "SPADE": SPADE(**common).fit(train_features),
    }


def map_difference(fitted, features):
    """Largest difference between the paper's decoder's maps and the reference's."""
    with torch.inference_mode():
        fast = fitted[PAPER].anomaly_map(features)
        reference = fitted[PAPER_REFERENCE].anomaly_map(features)
    return float(np.abs(fast - reference).max())


def throughput(extractor, detector, images, batch_size):
    """Images/s of encoding (and scoring, if ``detector``) ``images`` in batches."""
    if detector is not None:
        detector.set_params(batch_size=batch_size)
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        features = extractor.transform(images[first : first + batch_size])
        if detector is not None:
            detector.anomaly_map(features)
    return len(images) / (time.perf_counter() - start)


def interleaved(configs, images, batch_sizes, rounds):
    """Median images/s of each ``(name, extractor, detector)`` at each batch size,
    the configurations taking turns round by round: ``{(name, batch): images/s}``."""
    results = {(name, b): [] for name, _, _ in configs for b in batch_sizes}
    for _ in range(rounds):
        for batch_size in batch_sizes:
            for name, extractor, detector in configs:
                results[name, batch_size].append(
                    throughput(extractor, detector, images[: max(batch_size, len(images))], batch_size))
    return {key: statistics.median(values) for key, values in results.items()}


def backbone_rows(backbone, args, train, test):
    weights = "imagenet" if backbone == "efficientnet_lite0" else None
    extractor = FeatureExtractor(backbone=backbone, weights=weights, image_size=args.image_size,
                                 device="cpu", inference_dtype="float32", n_jobs=args.threads).fit()
    # wide_resnet50_2's training features are 7 MB an image: 64 are enough to time it.
    fitted = detectors(backbone, extractor.transform(train[:64] if backbone == "wide_resnet50_2"
                                                     else train), args.threads)
    difference = map_difference(fitted, extractor.transform(test[:8])) if PAPER in fitted else None
    configs = [("encoder only", extractor, None)] + [(name, extractor, d) for name, d in fitted.items()]
    speeds = interleaved(configs, test, args.batch_sizes, args.rounds)
    rows = []
    for batch_size in args.batch_sizes:
        encoder = speeds["encoder only", batch_size]
        for name, _, detector in configs:
            speed = speeds[name, batch_size]
            rows.append({"backbone": backbone, "batch": batch_size, "model": name, "images/s": speed,
                         "ratio to encoder": f"{speed / encoder:.2f}",
                         "fitted MB": "" if detector is None else f"{detector.model_size_bytes_ / 1e6:.1f}"})
            print(rows[-1], flush=True)
    return rows, difference


def precision_rows(args, train, test):
    extractors = {(dtype, graph): FeatureExtractor(device="cpu", inference_dtype=dtype, graph=graph,
                                                   n_jobs=args.threads).fit()
                  for graph in (True, False) for dtype in ("float32", "bfloat16")}
    model = CFlowAD(max_iter=20, random_state=0, device="cpu", n_jobs=args.threads)
    model.fit(extractors["float32", True].transform(train))
    # One fitted model scored at two precisions (no refit: inference_dtype
    # leaves training as it is), with and without its graphs.
    decoders = {(dtype, graph): copy.copy(model).set_params(inference_dtype=dtype, graph=graph)
                for dtype in ("float32", "bfloat16") for graph in (True, False)}

    def mode(graph):
        return "" if graph else " (graph=False)"

    def cflow(encoder, decoders, graph):
        return f"CFlowAD, encoder {encoder}{mode(graph)}, decoders {decoders}{mode(graph)}"

    configs = [(f"encoder {dtype}{mode(graph)} only", e, None) for (dtype, graph), e in extractors.items()]
    configs += [(cflow(e, d, graph), extractors[e, graph], decoders[d, graph])
                for e, d, graph in (("float32", "float32", True), ("bfloat16", "float32", True),
                                    ("bfloat16", "bfloat16", True), ("float32", "float32", False),
                                    ("bfloat16", "float32", False))]
    speeds = interleaved(configs, test, args.batch_sizes, args.rounds)
    rows = []
    for batch_size in args.batch_sizes:
        references = {graph: speeds[cflow("float32", "float32", graph), batch_size] for graph in (True, False)}
        alone = speeds["encoder float32 only", batch_size]
        for name, _, _ in configs:
            speed = speeds[name, batch_size]
            rows.append({"batch": batch_size, "configuration": name, "images/s": speed,
                         "x float32 CFlowAD": f"{speed / references[True]:.2f}",
                         "x float32 CFlowAD (graph=False)": f"{speed / references[False]:.2f}",
                         "x float32 encoder": f"{speed / alone:.2f}"})
            print(rows[-1], flush=True)
    return rows


@contextlib.contextmanager
def busy_cores(n):
    """``n`` CPU-bound processes for the block's duration."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(3)  # let the scheduler spread them
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def busy_rows(args, train, test):
    cores = len(os.sched_getaffinity(0))
    extractor = FeatureExtractor(device="cpu").fit()
    features = extractor.transform(train)
    rows = []
    for state, load in (("idle", contextlib.nullcontext), (f"{cores} busy processes", lambda: busy_cores(cores))):
        with load():
            for n_jobs in (None, 1):
                extractor.set_params(n_jobs=n_jobs)
                chosen = resolve_threads(n_jobs)
                start = time.perf_counter()
                model = CFlowAD(random_state=0, n_jobs=n_jobs).fit(features)
                row = {"machine": state, "n_jobs": str(n_jobs), "workers": chosen,
                       "fit s": time.perf_counter() - start}
                speeds = interleaved([("", extractor, model)], test, args.batch_sizes, 3)
                for batch_size in args.batch_sizes:
                    row[f"images/s batch {batch_size}"] = speeds["", batch_size]
                row["load average 1 min"] = f"{os.getloadavg()[0]:.2f}"
                rows.append(row)
                print(row, flush=True)
    idle = {row["n_jobs"]: row for row in rows[:2]}
    for row in rows:
        base = idle[row["n_jobs"]]
        row["fit x idle"] = f"{row['fit s'] / base['fit s']:.2f}"
        for batch_size in args.batch_sizes:
            key = f"images/s batch {batch_size}"
            row[f"scoring batch {batch_size} x idle"] = f"{row[key] / base[key]:.2f}"
    return rows


def worker_rows(args, train, test):
    """Images/s of the encoder and of CFlowAD's decoders apart, on 1 and
    ``--threads`` workers: how each stage scales with workers."""
    extractor = FeatureExtractor(device="cpu", inference_dtype="float32").fit()
    module = FeatureExtractor(device="cpu", inference_dtype="float32", graph=False).fit()
    model = CFlowAD(max_iter=20, random_state=0, device="cpu").fit(extractor.transform(train))
    eager = copy.copy(model).set_params(graph=False)
    features = extractor.transform(test)
    stages = {"encoder": lambda: extractor.transform(test),
              "encoder (graph=False)": lambda: module.transform(test),
              "CFlowAD's decoders": lambda: model.anomaly_map(features),
              "CFlowAD's decoders (graph=False)": lambda: eager.anomaly_map(features)}
    counts = sorted({1, args.threads})
    speeds = {(stage, workers): [] for stage in stages for workers in counts}
    for _ in range(args.rounds):
        for workers in counts:
            for estimator in (extractor, module, model, eager):
                estimator.set_params(n_jobs=workers)
            for stage, run in stages.items():
                start = time.perf_counter()
                run()
                speeds[stage, workers].append(len(test) / (time.perf_counter() - start))
    rows = []
    for (stage, workers), values in speeds.items():
        speed = statistics.median(values)
        rows.append({"stage": stage, "batch": len(test), "workers": workers, "images/s": speed,
                     "x 1 worker": f"{speed / statistics.median(speeds[stage, 1]):.2f}"})
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet18,wide_resnet50_2")
    parser.add_argument("--parts", default="backbones,precision,workers,busy")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS / "speed.md"))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    parts = args.parts.split(",")
    train, source = training_images(args.image_size)
    test = np.ascontiguousarray(train[::-1][: max(args.batch_sizes + [args.images])])
    sections, differences = [], []
    if "backbones" in parts:
        rows = []
        for backbone in args.backbones.split(","):
            backbone_table, difference = backbone_rows(backbone, args, train, test)
            rows += backbone_table
            if difference is not None:
                differences.append(f"{backbone} {difference:.2g}")
        sections.append((f"Backbones, float32, {args.threads} workers", rows))
    if "precision" in parts:
        sections.append((f"Precision: efficientnet_lite0, {args.threads} workers", precision_rows(args, train, test)))
    if "workers" in parts:
        sections.append((f"Stages on workers: efficientnet_lite0, batch {len(test)}", worker_rows(args, train, test)))
    if "busy" in parts:
        sections.append(("A busy machine: CFlowAD's default fit on bottle and scoring, efficientnet_lite0",
                         busy_rows(args, train, test)))
    write_results(args.out, "Speed: backbones, precision, workers, and a busy machine", (
        f"Written by `benchmarks/bench_speed.py`: {args.image_size} px images, detectors fitted on "
        f"{source} training features, median of {args.rounds} interleaved rounds of {args.images} "
        "images (3 in the busy-machine table). CFlowAD: default parameters unless named. Paper's "
        f"settings: {', '.join(f'{k}={v!r}' for k, v in PAPER_SETTINGS.items())}. The reference decoders are the "
        "latter evaluated as the paper's code does (a positional encoding per fiber, a loop over "
        "fiber batches); the largest difference between their anomaly maps and those of CFlowAD "
        "with the paper's settings, per backbone: " + (", ".join(differences) or "not measured") + ". "
        "Fit time in the busy-machine table is CFlowAD's fit on the training features (encoding "
        "not included), with default parameters."
    ), markdown_sections(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
