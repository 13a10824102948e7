"""Exported ONNX pipelines against skcflow's torch pipelines: parity, speed, size.

The default CFlowAD and PaDiM pipelines (efficientnet_lite0 at 256 px,
random_state=0) are fitted on MVTec AD bottle's training images and
exported with ``skcflow.export_onnx``. On the whole test split, the
exported model's outputs (onnxruntime, through ``skcflow.runtime``) are
compared with skcflow's: the largest map difference relative to the range
of skcflow's maps, whether the image scores rank the images identically,
and how many image decisions (``predict``) and pixel decisions
(``predict_mask``) agree. Speed: images/s end to end (raw uint8 images to
maps and scores) of torch and onnxruntime, both with the same number of
threads, in interleaved rounds (median of the rounds), at batch sizes 1 and
32. Writes benchmarks/results/export.md.

Usage: python benchmarks/bench_export.py [--threads 2] [--rounds 5]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import CATEGORIES, RESULTS, data_missing, timed, write_results

from skcflow import CFlowAD, FeatureExtractor, PaDiM, export_onnx, load_mvtec, make_pipeline
from skcflow.runtime import OnnxDetector


def parity(pipe, runtime, images):
    maps, expected = runtime.anomaly_map(images), pipe.anomaly_map(images)
    scores, expected_scores = runtime.score_samples(images), pipe.score_samples(images)
    same_order = np.array_equal(np.argsort(scores, kind="stable"),
                                np.argsort(expected_scores, kind="stable"))
    masks, expected_masks = runtime.predict_mask(images), pipe.predict_mask(images)
    return {
        "map difference / range": float(np.abs(maps - expected).max() / (expected.max() - expected.min())),
        "same image ranking": "yes" if same_order else "no",
        "predict agrees": f"{int((runtime.predict(images) == pipe.predict(images)).sum())}/{len(images)}",
        "predict_mask agrees": f"{100 * (masks == expected_masks).mean():.4f}%",
    }


def torch_pass(pipe, images, batch_size):
    for start in range(0, len(images), batch_size):
        pipe.anomaly_map(images[start : start + batch_size])


def onnx_pass(runtime, images, batch_size):
    for start in range(0, len(images), batch_size):
        runtime.run(images[start : start + batch_size])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "export.md"))
    args = parser.parse_args(argv)
    if data_missing():
        return 0
    torch.set_num_threads(args.threads)
    root = CATEGORIES["bottle"]
    train = load_mvtec(root, "bottle", "train", image_size=256)
    test = load_mvtec(root, "bottle", "test", image_size=256)
    folder = Path(tempfile.mkdtemp())
    models, parity_rows = {}, []
    for detector in (CFlowAD(random_state=args.seed), PaDiM(random_state=args.seed)):
        name = type(detector).__name__
        pipe = make_pipeline(FeatureExtractor(image_size=256), detector).fit(train.images)
        path = folder / f"{name}.onnx"
        report, seconds = timed(export_onnx, pipe, path)
        runtime = OnnxDetector(path, n_threads=args.threads)
        models[name] = pipe, runtime
        parity_rows.append({"model": name, **parity(pipe, runtime, test.images),
                            "export s": seconds, "ONNX MB": report.size_bytes / 1e6})
        print(parity_rows[-1], flush=True)
    images = np.ascontiguousarray(test.images[: args.images])
    timings = {}
    for _ in range(args.rounds):
        for name, (pipe, runtime) in models.items():
            for batch_size in (1, 32):
                for engine, run in (("torch", lambda: torch_pass(pipe, images, batch_size)),
                                    ("onnxruntime", lambda: onnx_pass(runtime, images, batch_size))):
                    start = time.perf_counter()
                    run()
                    speed = len(images) / (time.perf_counter() - start)
                    timings.setdefault((name, batch_size, engine), []).append(speed)
    speed_lines = ["| model | batch | torch images/s | onnxruntime images/s | onnxruntime / torch |",
                   "|---|---|---|---|---|"]
    for name in models:
        for batch_size in (1, 32):
            speeds = {e: statistics.median(timings[name, batch_size, e]) for e in ("torch", "onnxruntime")}
            speed_lines.append(f"| {name} | {batch_size} | {speeds['torch']:.1f} | "
                               f"{speeds['onnxruntime']:.1f} | {speeds['onnxruntime'] / speeds['torch']:.2f} |")
            print(speed_lines[-1], flush=True)
    columns = list(parity_rows[0])
    parity_lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in parity_rows:
        parity_lines.append("| " + " | ".join(
            f"{v:.2g}" if k == "map difference / range" else f"{v:.1f}" if isinstance(v, float) else str(v)
            for k, v in row.items()) + " |")
    write_results(args.out, "ONNX export: parity with skcflow, speed, size", (
        "Written by `benchmarks/bench_export.py`: default CFlowAD and PaDiM pipelines "
        f"(efficientnet_lite0 at 256 px, random_state={args.seed}) fitted on MVTec AD bottle, "
        "exported with skcflow.export_onnx and scored by onnxruntime through skcflow.runtime. "
        f"Parity on the {len(test.images)} test images; speed end to end (uint8 images to maps "
        f"and scores), {args.threads} threads for both engines, median of {args.rounds} "
        f"interleaved rounds of {len(images)} images."
    ), ["## Parity", "", *parity_lines, "", "## Speed", "", *speed_lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
