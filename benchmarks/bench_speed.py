"""Inference speed of the encoder alone and of each detector end to end.

All configurations run in one process, interleaved round by round, so that
the machine's noise hits them alike; the table reports the median images/s
over rounds and each detector's throughput as a ratio of the encoder's.
Detectors are fitted on bottle's training features when ../shared/data is
present (else on synthetic images); their speed does not depend on how long
they trained, so CFlowAD is trained briefly here (its full fit time is in
accuracy.md). The paper's backbones run with random weights, for speed only.

Usage: python benchmarks/bench_speed.py [--threads 2] [--rounds 5]
           [--backbones efficientnet_lite0,resnet18] [--image-size 256]
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from _common import CATEGORIES, RESULTS, write_results

from skcflow import SPADE, CFlowAD, FeatureExtractor, PaDiM, load_mvtec, make_defects
from skcflow.cflow import CFlowMaps
from skcflow.flows import positional_encoding

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
        reference = cls(**fitted.get_params())
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
PAPER_REFERENCE = "CFlowAD, paper's settings, reference decoders (before)"


def detectors(train_features):
    paper = CFlowAD(whiten=False, n_levels=None, neighborhood=1, max_iter=20, device="cpu",
                    random_state=0).fit(train_features)
    return {
        "CFlowAD": CFlowAD(max_iter=20, device="cpu", random_state=0).fit(train_features),
        PAPER: paper,
        PAPER_REFERENCE: ReferenceCFlowAD.like(paper),
        "PaDiM": PaDiM(device="cpu", random_state=0).fit(train_features),
        "SPADE": SPADE(device="cpu").fit(train_features),
    }


def map_difference(fitted, features):
    """Largest difference between the paper's decoder's maps and the reference's."""
    with torch.inference_mode():
        fast = fitted[PAPER].anomaly_map(features)
        reference = fitted[PAPER_REFERENCE].anomaly_map(features)
    return float(np.abs(fast - reference).max())


def throughput(extractor, detector, images, batch_size):
    """Images/s of encoding (and scoring, if ``detector``) ``images`` in batches."""
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        features = extractor.transform(images[first : first + batch_size])
        if detector is not None:
            detector.anomaly_map(features)
    return len(images) / (time.perf_counter() - start)


def run_backbone(backbone, args, train, test):
    weights = "imagenet" if backbone == "efficientnet_lite0" else None
    extractor = FeatureExtractor(backbone=backbone, weights=weights, image_size=args.image_size,
                                 device="cpu", batch_size=32).fit()
    fitted = detectors(extractor.transform(train))
    difference = map_difference(fitted, extractor.transform(test[:8]))
    configs = [("encoder only", None)] + list(fitted.items())
    results = {(name, b): [] for name, _ in configs for b in args.batch_sizes}
    for _ in range(args.rounds):
        for batch_size in args.batch_sizes:
            images = test[: max(batch_size, args.images)]
            for name, detector in configs:
                for model in fitted.values():
                    model.set_params(batch_size=batch_size)
                results[name, batch_size].append(throughput(extractor, detector, images, batch_size))
    rows = []
    for batch_size in args.batch_sizes:
        encoder = statistics.median(results["encoder only", batch_size])
        for name, detector in configs:
            speed = statistics.median(results[name, batch_size])
            size = "" if detector is None else f"{detector.model_size_bytes_ / 1e6:.1f}"
            rows.append(f"| {backbone} | {batch_size} | {name} | {speed:.1f} | "
                        f"{speed / encoder:.2f} | {size} |")
            print(rows[-1], flush=True)
    return rows, difference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet18,mobilenet_v3_large")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS / "speed.md"))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    train, source = training_images(args.image_size)
    test = np.ascontiguousarray(train[::-1][: max(args.batch_sizes + [args.images])])
    rows, differences = [], []
    for backbone in args.backbones.split(","):
        backbone_rows, difference = run_backbone(backbone, args, train, test)
        rows += backbone_rows
        differences.append(f"{backbone} {difference:.2g}")
    write_results(args.out, "Inference speed, end to end", (
        f"Written by `benchmarks/bench_speed.py`: {args.image_size} px images, "
        f"{args.threads} torch threads, detectors fitted on {source} training features, "
        f"median of {args.rounds} interleaved rounds of {args.images} images; "
        "ratio = images/s over the encoder alone at the same batch size. "
        "CFlowAD: default parameters (whitened decoders on the two coarsest levels of "
        "neighbourhood-averaged features). Paper's settings: whiten=False, neighborhood=1, "
        "n_levels=None. The reference decoders are the latter evaluated as the paper's code "
        "does (a positional encoding per fiber, a loop over fiber batches); the largest "
        "difference between their anomaly maps and those of CFlowAD with the paper's "
        "settings, per backbone: "
        + ", ".join(differences) + "."
    ), [
        "| backbone | batch | model | images/s | ratio to encoder | fitted MB |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
