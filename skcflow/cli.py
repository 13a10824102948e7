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
        params["n_epochs"] = args.epochs
        if args.max_iter is not None:
            params["max_iter"] = args.max_iter
    if name != "spade":
        params["random_state"] = args.seed
    return getattr(skcflow, DETECTORS[name])(**params)


def _extractor(args, image_size):
    from .features import FeatureExtractor

    return FeatureExtractor(backbone=args.backbone, image_size=image_size,
                            keep_aspect=args.keep_aspect, bit_depth=args.bit_depth,
                            device=args.device, inference_dtype=args.inference_dtype,
                            verbose=int(not args.quiet))


def _size_text(size):
    return f"{size} px" if isinstance(size, int) else f"{size[0]}x{size[1]} px"


def _categories(args):
    """The categories a run covers: ``[None]`` for the synthetic data.

    ``--category all`` is every folder of ``--root`` with a ``train``
    folder; a comma-separated list names several.
    """
    if not (args.root or args.category):
        return [None]
    if not (args.root and args.category):
        raise ValueError("give both --root and --category for an MVTec-layout dataset.")
    if args.category != "all":
        return [c.strip() for c in args.category.split(",") if c.strip()]
    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"Root folder not found: {root}")
    categories = sorted(c.name for c in root.iterdir() if (c / "train").is_dir())
    if not categories:
        raise ValueError(f"{root} holds no category folder (with a 'train' folder).")
    return categories


def _dataset(args, category):
    """``(train, test, size, description)``: an MVTec category or the synthetic default."""
    from .datasets import load_mvtec, make_defects

    if category is not None:
        size = args.image_size or 256
        train = load_mvtec(args.root, category, split="train", image_size=size,
                           keep_aspect=args.keep_aspect)
        test = load_mvtec(args.root, category, split="test", image_size=size,
                          keep_aspect=args.keep_aspect)
        return train, test, size, f"{category} ({args.root}), {_size_text(size)}"
    size = args.image_size or 128
    if not isinstance(size, int):
        raise ValueError("the synthetic data is square: give --image-size as one number.")
    data = make_defects(image_size=size, random_state=args.seed)
    return data.train, data.test, size, f"embedded synthetic defects, {_size_text(size)}"


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def compare(args):
    """Fit and evaluate the detectors on each category, and write one report."""
    from . import report
    from ._jobs import run_jobs

    categories = _categories(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    several = len(categories) > 1
    tasks = [(args, category, out, category if several else "") for category in categories]
    sections = run_jobs(_compare_category, tasks, args.backend, args.scheduler, args.jobs)
    table = report.results_table([row for section in sections for row in section["rows"]])
    table.to_csv(out / "results.csv", index=False)
    title = (f"skcflow comparison: {len(categories)} categories of {args.root}" if several
             else f"skcflow comparison: {sections[0]['description']}")
    report.write_index(str(out), title, table, sections)
    for section in sections:
        print(f"skcflow compare on {section['description']}: {section['n_train']} train, "
              f"{section['n_test']} test images")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a"))
    print(f"report: {out / 'index.html'}")
    return 0


def _compare_category(args, category, out, subfolder, threads=None):
    """One category's rows, ROC plot and panels (files in ``out / subfolder``), for the report."""
    from sklearn.metrics import roc_curve

    from . import report
    from ._jobs import use_threads
    from .calibration import pvalues
    from .metrics import aupro, image_auroc, pixel_auroc

    use_threads(threads)
    folder = out / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    train, test, size, description = _dataset(args, category)
    extractor = _extractor(args, size).fit(train.images)
    train_features = extractor.transform(train.images)
    test_features, encode_seconds = _timed(extractor.transform, test.images)
    n_test = len(test.images)
    rows, curves, panels, distributions, calibration = [], {}, [], {}, {}
    normal = test.target == 0
    for name in args.models.split(","):
        detector = _detector(name.strip(), args)
        _, fit_seconds = _timed(detector.fit, train_features)
        maps, map_seconds = _timed(detector.anomaly_map, test_features)
        scores = -detector.score_samples(test_features)
        model = type(detector).__name__
        # Without ground-truth masks the pixel metrics are not available
        # (NaN, shown as n/a), rather than computed against empty masks.
        known = test.masks is not None
        rows.append({
            **({} if category is None else {"category": category}),
            "model": model,
            "image AUROC": image_auroc(test.target, scores),
            "pixel AUROC": pixel_auroc(test.masks, maps) if known else np.nan,
            "AUPRO": aupro(test.masks, maps) if known else np.nan,
            "fit s": fit_seconds,
            "inference images/s": n_test / (encode_seconds + map_seconds),
            "fitted MB": detector.model_size_bytes_ / 1e6,
        })
        fpr, tpr, _ = roc_curve(test.target, scores)
        curves[model] = (fpr, tpr, rows[-1]["image AUROC"])
        distributions[model] = (detector.training_scores_, scores[normal], scores[~normal],
                                -detector.offset_)
        calibration[model] = pvalues(scores[normal], detector.training_scores_)
        panels += _case_panels(folder, model, test, maps, scores, detector, extractor.bit_depth_)
    report.save_roc(folder / "roc.png", curves)
    report.save_score_distributions(folder / "scores.png", distributions)
    report.save_calibration(folder / "calibration.png", calibration)
    return {"heading": subfolder and category, "folder": subfolder,
            "panels": panels, "rows": rows, "description": description,
            "n_train": len(train.images), "n_test": n_test}


def _case_panels(out, model, test, maps, scores, detector, bit_depth):
    """Panels of the best and worst cases of one model.

    Best: the most confidently detected defect. Worst: the defect scored
    most normal, and the normal image scored most anomalous.
    """
    from . import report
    from .overlay import to_display

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
        mask = None if test.masks is None else test.masks[index]
        report.save_panel(out / name, to_display(test.images[index], bit_depth), mask,
                          maps[index], maps[index] > detector.pixel_threshold_, 0.0, vmax, caption)
        panels.append((caption, name))
    return panels


def fit(args):
    """Fit a pipeline per category (or on ``--images``) and save it."""
    from ._jobs import run_jobs
    from .persistence import check_destination

    if args.images:
        tasks = [(args, args.images, Path(args.out))]
    elif args.root and args.category:
        categories = _categories(args)
        if len(categories) == 1:
            tasks = [(args, Path(args.root) / categories[0] / "train" / "good", Path(args.out))]
        else:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            tasks = [(args, Path(args.root) / c / "train" / "good", Path(args.out) / f"{c}.skcflow")
                     for c in categories]
    else:
        raise ValueError("give --images DIR, or --root DIR and --category NAME.")
    # Before any training: a bad destination fails now, not after the fit.
    for _, _, out in tasks:
        check_destination(out)
    for line in run_jobs(_fit_one, tasks, args.backend, args.scheduler, args.jobs):
        print(line)
    return 0


def _fit_one(args, images, out, threads=None):
    """Fit a pipeline on a folder or files of good images, streamed, and save it."""
    from ._jobs import use_threads
    from .persistence import save
    from .pipeline import make_pipeline
    from .streaming import FeatureStream

    use_threads(threads)
    extractor = _extractor(args, args.image_size or 256)
    pipe = make_pipeline(extractor, _detector(args.model, args))
    stream = FeatureStream(extractor, images, errors=_errors(args))
    start = time.perf_counter()
    extractor.fit(next(iter(stream.image_batches())))
    pipe[-1].fit(stream)
    seconds = time.perf_counter() - start
    save(pipe, out)
    return (f"fitted {type(pipe[-1]).__name__} on {pipe[-1].n_train_samples_} images in "
            f"{seconds:.1f} s; saved to {out}")


# Files scored at once: bounds memory, and is the unit of work shared out
# among jobs.
_SCORE_CHUNK = 256


def score(args):
    """Scores, heat-map overlays and predicted masks, at each file's own size.

    Images are read into the model's frame, scored there, and their maps
    taken back to the file's pixel grid (:func:`skcflow.geometry.restore`),
    so overlays and masks line up with the original files. A ``.onnx`` model
    (from ``skcflow export``) is scored by onnxruntime through
    :mod:`skcflow.runtime`, without torch. Files are scored a chunk at a
    time, in this process or, with ``--jobs`` or ``--backend dask``, shared
    out among jobs.
    """
    from .readers import list_files

    paths, _ = list_files(args.images)
    out = Path(args.out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    tasks = [(args.model, paths[i : i + _SCORE_CHUNK], out, i, _errors(args), args.false_alarm_rate)
             for i in range(0, len(paths), _SCORE_CHUNK)]
    if args.backend == "loky" and args.jobs in (None, 1):
        # In this process, without joblib: the torch-free runtime needs
        # nothing more than numpy, onnxruntime and Pillow.
        results = [_score_files(*task) for task in tasks]
    else:
        from ._jobs import run_jobs

        results = run_jobs(_score_files, tasks, args.backend, args.scheduler, args.jobs)
    rows = [row for result in results for row in result]
    if not rows:
        raise ValueError(f"No image could be scored from {args.images}.")
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "score", "label"])
        writer.writerows(rows)
    n_anomalous = sum(row[2] == "anomalous" for row in rows)
    print(f"scored {len(rows)} images ({n_anomalous} anomalous); results in {out / 'scores.csv'}, "
          "overlays and masks at each file's size")
    return 0


_MODELS = {}


def _scorer(path, false_alarm_rate):
    """``(settings, thresholds, run)`` of a model file, loaded once per process.

    With a false-alarm rate, the thresholds are moved to it
    (``set_threshold``), from the training scores the file keeps.
    """
    if (path, false_alarm_rate) not in _MODELS:
        if str(path).lower().endswith(".onnx"):
            from .runtime import OnnxDetector

            detector = OnnxDetector(path)
            settings = detector.frame_size_, detector.keep_aspect_, detector.bit_depth_
            run = detector.run
        else:
            pipe = _load_pipeline(path)
            extractor, detector = pipe[0], pipe[-1]

            def run(images):
                features = pipe[:-1].transform(images)
                return detector.anomaly_map(features), -detector.score_samples(features)

            settings = extractor.frame_size_, extractor.keep_aspect, extractor.bit_depth_
        if false_alarm_rate is not None:
            detector.set_threshold(false_alarm_rate=false_alarm_rate)
        thresholds = detector.offset_, detector.pixel_threshold_
        _MODELS[path, false_alarm_rate] = settings, thresholds, run
    return _MODELS[path, false_alarm_rate]


def _score_files(model_path, paths, out, first_index, errors, false_alarm_rate, threads=None):
    """Score files, write their overlays and masks; their ``scores.csv`` rows."""
    from PIL import Image

    from .geometry import restore
    from .overlay import overlay, to_display
    from .readers import read_image, read_images

    if threads is not None:
        from ._jobs import use_threads

        use_threads(threads)
    (frame, keep_aspect, bit_depth), (offset, pixel_threshold), run = _scorer(model_path, false_alarm_rate)
    try:
        images, filenames, sizes, _ = read_images(paths, frame, keep_aspect, errors)
    except ValueError as exc:
        if errors == "skip" and str(exc).startswith("No image could be loaded"):
            return []
        raise
    maps, scores = run(images)
    # predict's rule, on the scores already computed.
    labels = np.where(-scores - offset >= 0, 1, -1)
    rows = []
    for i, (path, s, label) in enumerate(zip(filenames, scores, labels)):
        rows.append([path, f"{s:.6g}", "anomalous" if label == -1 else "normal"])
        own = restore(maps[i : i + 1], sizes[i], frame, keep_aspect)[0]
        image = to_display(read_image(path), bit_depth)
        stem = f"{first_index + i:04d}_{Path(path).stem}"
        Image.fromarray(overlay(image, own, 0.0, 2 * pixel_threshold)).save(out / f"{stem}.png")
        mask = (own > pixel_threshold).astype(np.uint8) * 255
        Image.fromarray(mask).save(out / "masks" / f"{stem}_mask.png")
    return rows


def export(args):
    from .export import export_onnx

    pipe = _load_pipeline(args.model)
    report = export_onnx(pipe, args.out)
    print(f"exported {type(pipe[-1]).__name__} to {args.out} ({report.size_bytes / 1e6:.1f} MB); "
          f"onnxruntime reproduces skcflow's maps to {report.map_difference:.2g} of their range "
          f"on {report.n_checked} test images")
    return 0


def _errors(args):
    # load_images warns once per skipped file, naming it and the reason.
    return "skip" if args.skip_bad_files else "raise"


def _load_pipeline(path, with_file=False):
    from .persistence import read_model_file
    from .pipeline import AnomalyPipeline

    file = read_model_file(path)
    if not isinstance(file.model, AnomalyPipeline):
        raise ValueError(f"{path} holds a {type(file.model).__name__}, not a pipeline written by "
                         "'skcflow fit'.")
    return file if with_file else file.model


def info(args):
    file = _load_pipeline(args.model, with_file=True)
    pipe, provenance = file.model, file.provenance
    extractor, detector = pipe[0], pipe[-1]
    print(f"integrity: verified (SHA-256 {file.sha256}), format version {file.format_version}")
    print(f"saved: {provenance.get('saved')} by skcflow {provenance.get('skcflow')}, torch "
          f"{provenance.get('torch')}, numpy {provenance.get('numpy')}, Python "
          f"{provenance.get('python')}")
    print(f"encoder weights: SHA-256 {extractor.identity_['weights_sha256']} "
          f"({extractor.weights if isinstance(extractor.weights, str) else 'random'}); input "
          f"normalisation mean {_numbers(extractor.identity_['mean'])}, std "
          f"{_numbers(extractor.identity_['std'])}")
    print(f"method: {type(detector).__name__}")
    print(f"backbone: {extractor.backbone}, layers {list(extractor.layers_)}, "
          f"image size {_size_text(extractor.image_size)}"
          f"{' (aspect kept)' if extractor.keep_aspect else ''}, {extractor.bit_depth_}-bit")
    print(f"trained on: {detector.n_train_samples_} images")
    print(f"image threshold (offset_): {detector.offset_:.6g}; "
          f"pixel threshold: {detector.pixel_threshold_:.6g}")
    print(f"fitted size: {detector.model_size_bytes_ / 1e6:.2f} MB")
    params = ", ".join(f"{k}={v!r}" for k, v in sorted(detector.get_params().items()))
    print(f"parameters: {params}")
    return 0


def image_size(text):
    """``"256"`` or ``"256x640"`` (height x width) as an ``image_size``."""
    from .features import _MAX_SIDE

    parts = text.lower().split("x")
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or not 32 <= min(sides, default=0) <= max(sides) <= _MAX_SIDE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an image size: give one number of pixels or HEIGHTxWIDTH, "
            f"each at least 32 and at most {_MAX_SIDE} (e.g. 256 or 256x640)."
        )
    return sides[0] if len(sides) == 1 else tuple(sides)


def bit_depth(text):
    """``"auto"`` or one of the bit depths the extractor takes."""
    from ._images import BIT_DEPTHS

    if text == "auto":
        return text
    if text.isdigit() and int(text) in BIT_DEPTHS:
        return int(text)
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a bit depth: give auto or one of {', '.join(map(str, BIT_DEPTHS))}."
    )


def _rate(text):
    """A rate in (0, 1), for ``--false-alarm-rate``."""
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 < rate < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate: give a number between 0 and 1.")
    return rate


def _numbers(values):
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _add_model_options(parser):
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=image_size, default=None,
                        help="pixels, or HEIGHTxWIDTH such as 256x640 (default 256; 128 for "
                             "the synthetic data)")
    parser.add_argument("--keep-aspect", action="store_true",
                        help="letterbox images into the image size instead of stretching them")
    parser.add_argument("--bit-depth", type=bit_depth, default="auto",
                        help="bits per sample of the camera: 8, 10, 12, 14, 16 or auto (8 for "
                             "8-bit files, 16 for 16-bit ones)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--inference-dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        default="auto", help="precision of the encoder (auto: float32 on a CPU, "
                                             "half precision on CUDA)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="CFlowAD steps per level (default: CFlowAD's, 250)")
    parser.add_argument("--epochs", type=float, default=None,
                        help="CFlowAD passes over the training features (capped by --max-iter)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_job_options(parser, what):
    from ._jobs import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default="loky",
                        help=f"run {what} as joblib jobs on this machine (loky) or on a Dask cluster")
    parser.add_argument("--scheduler", help="address of a dask.distributed scheduler (with "
                                            "--backend dask; without one, a local cluster is started)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="jobs at once (and local Dask workers); default: one per core")


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
    p.add_argument("--category", help="category inside --root, a comma-separated list, or 'all'")
    p.add_argument("--out", default="skcflow-report", help="report folder")
    _add_model_options(p)
    _add_job_options(p, "one job per category")
    p.set_defaults(func=compare)

    p = commands.add_parser("fit", help="fit a detector on good images and save it")
    p.add_argument("--model", default="cflow", choices=sorted(DETECTORS))
    p.add_argument("--root")
    p.add_argument("--category", help="category inside --root, a comma-separated list, or 'all'")
    p.add_argument("--images", nargs="+", help="image files or folders of good images")
    _add_skip_option(p)
    p.add_argument("--out", required=True,
                   help="model file to write (a folder, for one model per category)")
    _add_model_options(p)
    _add_job_options(p, "one job per category")
    p.set_defaults(func=fit)

    p = commands.add_parser("score", help="score images with a saved model")
    p.add_argument("model", help="model file from 'skcflow fit', or ONNX file from 'skcflow export'")
    p.add_argument("images", nargs="+", help="image files or folders")
    _add_skip_option(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--false-alarm-rate", type=_rate, default=None,
                   help="flag images (and pixels) whose p-value of normality is at most this, "
                        "e.g. 0.01: the thresholds move without a refit")
    _add_job_options(p, "chunks of files")
    p.set_defaults(func=score)

    p = commands.add_parser("export", help="export a saved pipeline to ONNX, for onnxruntime")
    p.add_argument("model", help="model file written by 'skcflow fit'")
    p.add_argument("out", help="ONNX file to write")
    p.set_defaults(func=export)

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
