"""The ``skcflow`` command: compare detectors, fit, score and inspect models.

``skcflow compare`` fits CFlowAD, PaDiM and SPADE on one dataset (the
embedded synthetic one by default, or an MVTec-layout category) and writes a
report folder; ``skcflow fit`` / ``skcflow score`` / ``skcflow info`` train,
apply and describe a saved model. Errors are one line on stderr and a
non-zero exit code.
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from ._version import __version__

DETECTORS = {"cflow": "CFlowAD", "padim": "PaDiM", "spade": "SPADE"}


def _detector(name, args):
    import skcflow

    if name not in DETECTORS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(DETECTORS)}.")
    params = {"device": args.device, "verbose": int(not args.quiet)}
    if name == "cflow":
        params.update(max_iter=args.max_iter, n_epochs=args.epochs)
    if name != "spade":
        params["random_state"] = args.seed
    return getattr(skcflow, DETECTORS[name])(**params)


def _extractor(args, image_size):
    from .features import FeatureExtractor

    return FeatureExtractor(backbone=args.backbone, image_size=image_size, device=args.device,
                            verbose=int(not args.quiet))


def _dataset(args):
    """``(train, test, description)``: an MVTec category or the synthetic default."""
    from .datasets import load_mvtec, make_defects

    if args.root or args.category:
        if not (args.root and args.category):
            raise ValueError("give both --root and --category for an MVTec-layout dataset.")
        size = args.image_size or 256
        train = load_mvtec(args.root, args.category, split="train", image_size=size)
        test = load_mvtec(args.root, args.category, split="test", image_size=size)
        return train, test, f"{args.category} ({args.root}), {size} px"
    size = args.image_size or 128
    data = make_defects(image_size=size, random_state=args.seed)
    return data.train, data.test, f"embedded synthetic defects, {size} px"


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def compare(args):
    from sklearn.metrics import roc_curve

    from . import report
    from .metrics import aupro, image_auroc, pixel_auroc

    train, test, description = _dataset(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = _extractor(args, train.images.shape[1]).fit()
    train_features = extractor.transform(train.images)
    test_features, encode_seconds = _timed(extractor.transform, test.images)
    n_test = len(test.images)
    rows, curves, panels = [], {}, []
    for name in args.models.split(","):
        detector = _detector(name.strip(), args)
        _, fit_seconds = _timed(detector.fit, train_features)
        maps, map_seconds = _timed(detector.anomaly_map, test_features)
        scores = -detector.score_samples(test_features)
        model = type(detector).__name__
        rows.append({
            "model": model,
            "image AUROC": image_auroc(test.target, scores),
            "pixel AUROC": pixel_auroc(test.masks, maps),
            "AUPRO": aupro(test.masks, maps),
            "fit s": fit_seconds,
            "inference images/s": n_test / (encode_seconds + map_seconds),
            "fitted MB": detector.model_size_bytes_ / 1e6,
        })
        fpr, tpr, _ = roc_curve(test.target, scores)
        curves[model] = (fpr, tpr, rows[-1]["image AUROC"])
        panels += _case_panels(out, model, test, maps, scores, detector)
    table = report.results_table(rows)
    table.to_csv(out / "results.csv", index=False)
    report.save_roc(out / "roc.png", curves)
    report.write_index(str(out), f"skcflow comparison: {description}", table, panels)
    print(f"skcflow compare on {description}: {len(train.images)} train, {n_test} test images")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"report: {out / 'index.html'}")
    return 0


def _case_panels(out, model, test, maps, scores, detector):
    """Panels of the best and worst cases of one model.

    Best: the most confidently detected defect. Worst: the defect scored
    most normal, and the normal image scored most anomalous.
    """
    from . import report

    anomalous = np.flatnonzero(test.target == 1)
    normal = np.flatnonzero(test.target == 0)
    cases = []
    if len(anomalous):
        cases += [("best: highest-scored defect", anomalous[np.argmax(scores[anomalous])]),
                  ("worst: lowest-scored defect", anomalous[np.argmin(scores[anomalous])])]
    if len(normal):
        cases.append(("worst: highest-scored normal image", normal[np.argmax(scores[normal])]))
    vmax = 2 * detector.pixel_threshold_
    panels = []
    for label, index in cases:
        name = f"{model}_{len(panels)}.png"
        caption = f"{model}, {label}: {test.filenames[index]} (score {scores[index]:.3g})"
        report.save_panel(out / name, test.images[index], test.masks[index], maps[index],
                          maps[index] > detector.pixel_threshold_, 0.0, vmax, caption)
        panels.append((caption, name))
    return panels


def fit(args):
    from .datasets import load_images, load_mvtec
    from .persistence import save
    from .pipeline import make_pipeline

    if args.images:
        images = load_images(args.images, image_size=args.image_size or 256,
                             errors=_errors(args)).images
    elif args.root and args.category:
        images = load_mvtec(args.root, args.category, split="train",
                            image_size=args.image_size or 256).images
    else:
        raise ValueError("give --images DIR, or --root DIR and --category NAME.")
    pipe = make_pipeline(_extractor(args, images.shape[1]), _detector(args.model, args))
    _, seconds = _timed(pipe.fit, images)
    save(pipe, args.out)
    print(f"fitted {type(pipe[-1]).__name__} on {len(images)} images in {seconds:.1f} s; "
          f"saved to {args.out}")
    return 0


def score(args):
    from PIL import Image

    from . import report
    from .datasets import load_images

    pipe = _load_pipeline(args.model)
    detector = pipe[-1]
    data = load_images(args.images, image_size=pipe[0].image_size, errors=_errors(args))
    maps = pipe.anomaly_map(data.images)
    scores = -pipe.score_samples(data.images)
    labels = pipe.predict(data.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vmax = 2 * detector.pixel_threshold_
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "score", "label"])
        for i, (path, s, label) in enumerate(zip(data.filenames, scores, labels)):
            writer.writerow([path, f"{s:.6g}", "anomalous" if label == -1 else "normal"])
            picture = report.overlay(data.images[i], maps[i], 0.0, vmax)
            Image.fromarray(picture).save(out / f"{i:04d}_{Path(path).stem}.png")
    print(f"scored {len(scores)} images ({int((labels == -1).sum())} anomalous); "
          f"results in {out / 'scores.csv'}")
    return 0


def _errors(args):
    # load_images warns once per skipped file, naming it and the reason.
    return "skip" if args.skip_bad_files else "raise"


def _load_pipeline(path):
    from .persistence import load
    from .pipeline import AnomalyPipeline

    pipe = load(path)
    if not isinstance(pipe, AnomalyPipeline):
        raise ValueError(f"{path} holds a {type(pipe).__name__}, not a pipeline written by "
                         "'skcflow fit'.")
    return pipe


def info(args):
    pipe = _load_pipeline(args.model)
    extractor, detector = pipe[0], pipe[-1]
    print(f"method: {type(detector).__name__}")
    print(f"backbone: {extractor.backbone}, layers {list(extractor.layers_)}, "
          f"image size {extractor.image_size}")
    print(f"trained on: {detector.n_train_samples_} images")
    print(f"image threshold (offset_): {detector.offset_:.6g}; "
          f"pixel threshold: {detector.pixel_threshold_:.6g}")
    print(f"fitted size: {detector.model_size_bytes_ / 1e6:.2f} MB")
    params = ", ".join(f"{k}={v!r}" for k, v in sorted(detector.get_params().items()))
    print(f"parameters: {params}")
    return 0


def _add_model_options(parser):
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None,
                        help="pixels (default 256; 128 for the synthetic data)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-iter", type=int, default=500, help="CFlowAD steps per level")
    parser.add_argument("--epochs", type=float, default=None,
                        help="CFlowAD passes over the training features (capped by --max-iter)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_skip_option(parser):
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="skip unreadable images with a warning instead of stopping")


def build_parser():
    parser = argparse.ArgumentParser(prog="skcflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"skcflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("compare", help="fit and evaluate detectors, write a report")
    p.add_argument("--models", default="cflow,padim,spade")
    p.add_argument("--root", help="MVTec-layout dataset folder")
    p.add_argument("--category", help="category inside --root")
    p.add_argument("--out", default="skcflow-report", help="report folder")
    _add_model_options(p)
    p.set_defaults(func=compare)

    p = commands.add_parser("fit", help="fit a detector on good images and save it")
    p.add_argument("--model", default="cflow", choices=sorted(DETECTORS))
    p.add_argument("--root")
    p.add_argument("--category")
    p.add_argument("--images", nargs="+", help="image files or folders of good images")
    _add_skip_option(p)
    p.add_argument("--out", required=True, help="model file to write")
    _add_model_options(p)
    p.set_defaults(func=fit)

    p = commands.add_parser("score", help="score images with a saved model")
    p.add_argument("model")
    p.add_argument("images", nargs="+", help="image files or folders")
    _add_skip_option(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=score)

    p = commands.add_parser("info", help="describe a saved model")
    p.add_argument("model")
    p.set_defaults(func=info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("skcflow: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the command line shows one line, not a traceback
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"skcflow: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
