import csv
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from skcflow.cli import main

from conftest import real_data

FAST = ["--image-size", "64", "--max-iter", "15", "--quiet"]


def test_compare_writes_table_and_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "CFlowAD" in printed and "PaDiM" in printed and "SPADE" in printed
    table = pd.read_csv(out / "results.csv")
    assert list(table["model"]) == ["CFlowAD", "PaDiM", "SPADE"]
    assert table[["image AUROC", "pixel AUROC", "AUPRO"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table["fitted MB"] > 0).all() and (table["inference images/s"] > 0).all()
    page = (out / "index.html").read_text()
    assert "roc.png" in page and (out / "roc.png").stat().st_size > 1000
    panels = sorted(p.name for p in out.glob("*_?.png"))
    assert len(panels) == 9 and all(name in page for name in panels)


def test_fit_score_info_on_bottle(tmp_path, capsys):
    root = real_data("mvtec_ad")
    model = tmp_path / "bottle.skcflow"
    assert main(["fit", "--root", str(root), "--category", "bottle", "--out", str(model),
                 "--model", "padim", *FAST]) == 0
    images = sorted((root / "bottle" / "test" / "broken_large").glob("*.png"))[:2]
    images += sorted((root / "bottle" / "test" / "good").glob("*.png"))[:2]
    out = tmp_path / "scores"
    assert main(["score", str(model), *map(str, images), "--out", str(out)]) == 0
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == list(map(str, images))
    assert {r["label"] for r in rows} <= {"normal", "anomalous"}
    scores = [float(r["score"]) for r in rows]
    assert min(scores[:2]) > max(scores[2:])  # broken bottles score above good ones
    assert len(list(out.glob("*.png"))) == 4
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    described = capsys.readouterr().out
    assert "method: PaDiM" in described and "efficientnet_lite0" in described
    assert "integrity: verified (SHA-256 " in described and "encoder weights: SHA-256 " in described
    assert "torch 2." in described


@pytest.mark.parametrize("argv, message", [
    (["compare", "--root", "/nonexistent", "--category", "bottle"], "/nonexistent"),
    (["compare", "--root", "/tmp"], "--category"),
    (["info", "/nonexistent/model.skcflow"], "not found"),
    (["fit", "--out", "x.skcflow"], "--images"),
])
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.startswith("skcflow: error:") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("destination, message", [
    ("folder", "is a folder"), ("missing/m.skcflow", "does not exist")])
def test_fit_checks_its_destination_before_training(tmp_path, capsys, destination, message):
    (tmp_path / "folder").mkdir()
    out = tmp_path / destination
    # The images do not exist either: the destination is checked first.
    argv = ["fit", "--images", str(tmp_path / "no-images"), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(out) in err and message in err


def test_wrong_model_file_and_no_traceback(tmp_path):
    bogus = tmp_path / "model.skcflow"
    bogus.write_text("not a model")
    result = subprocess.run([sys.executable, "-m", "skcflow", "info", str(bogus)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "model.skcflow" in result.stderr


def test_skip_bad_files_in_fit_and_score(tmp_path, capsys):
    from PIL import Image

    from skcflow import make_defects

    data = make_defects(n_train=6, n_test=2, image_size=64, random_state=0)
    folder = tmp_path / "good"
    folder.mkdir()
    for i, image in enumerate(data.train.images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    model = tmp_path / "m.skcflow"
    argv = ["fit", "--images", str(folder), "--model", "padim", "--out", str(model), *FAST]
    assert main(argv) == 1
    assert "broken.png" in capsys.readouterr().err and not model.exists()
    with pytest.warns(UserWarning, match="broken.png"):
        assert main([*argv, "--skip-bad-files"]) == 0
    assert "on 6 images" in capsys.readouterr().out
    out = tmp_path / "scores"
    with pytest.warns(UserWarning, match="broken.png"):
        assert main(["score", str(model), str(folder), "--out", str(out), "--skip-bad-files"]) == 0
    with open(out / "scores.csv") as f:
        assert sorted(r["file"] for r in csv.DictReader(f)) == sorted(
            str(folder / f"{i}.png") for i in range(6))


def test_image_size_and_bit_depth_options_parse_or_say_why(capsys):
    from skcflow.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["fit", "--images", "x", "--out", "m", "--image-size", "256x640",
                              "--bit-depth", "12", "--keep-aspect"])
    assert args.image_size == (256, 640) and args.bit_depth == 12 and args.keep_aspect
    assert parser.parse_args(["compare", "--image-size", "96"]).image_size == 96
    assert parser.parse_args(["compare"]).bit_depth == "auto"
    for option, value, message in [("--image-size", "0", "at least 32"),
                                   ("--image-size", "256x", "HEIGHTxWIDTH"),
                                   ("--image-size", "16x640", "at least 32"),
                                   ("--bit-depth", "9", "not a bit depth")]:
        with pytest.raises(SystemExit):
            parser.parse_args(["compare", option, value])
        assert message in capsys.readouterr().err


def _write_deep(paths, folder, fmt, rng):
    """The 8-bit files as a camera of more bits would have written them.

    Each 8-bit level v becomes v * 2**(bits - 8) plus detail below the 8-bit
    step, in a 16-bit TIFF or a 16-bit PNG of 12-bit values.
    """
    import tifffile
    from PIL import Image

    from skcflow.readers import read_image

    folder.mkdir()
    shift = {"tif16": 8, "png12": 4, "png8": 0}[fmt]
    for path in paths:
        v = read_image(path).astype(np.uint16)
        deep = (v << shift) + rng.integers(0, 2**shift, v.shape).astype(np.uint16)
        if fmt == "png8":
            Image.fromarray(v.astype(np.uint8)).save(folder / f"{path.parent.name}_{path.stem}.png")
        elif fmt == "tif16":
            tifffile.imwrite(folder / f"{path.parent.name}_{path.stem}.tif", deep, compression="zlib")
        else:
            Image.fromarray(deep).save(folder / f"{path.parent.name}_{path.stem}.png")


def _scores(path):
    with open(path) as f:
        return np.array([float(row["score"]) for row in csv.DictReader(f)])


@pytest.mark.parametrize("fmt, bits", [("tif16", "16"), ("png12", "12")])
def test_deep_camera_files_fit_and_score_as_their_8_bit_versions(tmp_path, fmt, bits, capsys):
    from PIL import Image
    from scipy.stats import spearmanr

    root = real_data("mtd", "magnetic_tile")
    train = sorted((root / "train" / "good").glob("*.jpg"))[:40]
    test = sorted((root / "test" / "good").glob("*.jpg"))[:8]
    for defect in ("blowhole", "break", "crack", "uneven"):
        test += sorted((root / "test" / defect).glob("*.jpg"))[:3]
    rng = np.random.default_rng(0)
    _write_deep(train, tmp_path / "train", fmt, rng)
    _write_deep(test, tmp_path / "test", fmt, rng)
    _write_deep(test, tmp_path / "test8", "png8", rng)
    options = ["--model", "padim", "--image-size", "64", "--quiet"]
    assert main(["fit", "--images", *map(str, train), "--out", str(tmp_path / "8.skcflow"),
                 *options]) == 0
    assert main(["fit", "--images", str(tmp_path / "train"), "--out", str(tmp_path / "deep.skcflow"),
                 "--bit-depth", bits, *options]) == 0
    assert main(["score", str(tmp_path / "8.skcflow"), str(tmp_path / "test8"),
                 "--out", str(tmp_path / "scored8")]) == 0
    assert main(["score", str(tmp_path / "deep.skcflow"), str(tmp_path / "test"),
                 "--out", str(tmp_path / "scored")]) == 0
    eight, deep = _scores(tmp_path / "scored8" / "scores.csv"), _scores(tmp_path / "scored" / "scores.csv")
    assert spearmanr(eight, deep).statistic >= 0.99
    # Overlays and masks have each file's own (non-square, varied) size.
    overlays = sorted((tmp_path / "scored").glob("*.png"))
    masks = sorted((tmp_path / "scored" / "masks").glob("*_mask.png"))
    assert len(overlays) == len(masks) == len(test)
    sizes = [Image.open(path).size for path in sorted((tmp_path / "test8").iterdir())]
    assert len(set(sizes)) > 5
    assert [Image.open(p).size for p in overlays] == sizes == [Image.open(p).size for p in masks]
    capsys.readouterr()
    assert main(["info", str(tmp_path / "deep.skcflow")]) == 0
    assert f"{bits}-bit" in capsys.readouterr().out
    if bits == "12":
        with pytest.warns(UserWarning, match="likely 12-bit.*--bit-depth 12"):
            main(["fit", "--images", str(tmp_path / "train"), "--out", str(tmp_path / "a.skcflow"),
                  *options])


def test_compare_without_ground_truth_reports_image_auroc_only(tmp_path, capsys):
    from PIL import Image

    from skcflow import make_defects

    data = make_defects(n_train=12, n_test=8, image_size=64, random_state=0)
    for split, bunch in (("train", data.train), ("test", data.test)):
        for i, (image, kind) in enumerate(zip(bunch.images, bunch.defect_type)):
            folder = tmp_path / "line" / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    out = tmp_path / "report"
    assert main(["compare", "--root", str(tmp_path), "--category", "line", "--out", str(out),
                 "--models", "padim", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "n/a" in printed
    table = pd.read_csv(out / "results.csv")
    assert 0 <= table["image AUROC"][0] <= 1
    assert table[["pixel AUROC", "AUPRO"]].isna().all().all()
    assert "no ground truth" not in printed and "n/a" in (out / "index.html").read_text()


def test_inference_dtype_option_sets_the_encoders_precision(tmp_path, synthetic):
    import skcflow
    from PIL import Image

    for i, image in enumerate(synthetic.train.images[:6]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    out = tmp_path / "half.skcflow"
    assert main(["fit", "--images", str(tmp_path), "--model", "padim", "--out", str(out),
                 "--inference-dtype", "bfloat16", *FAST]) == 0
    assert skcflow.load(out)[0].inference_dtype_ == "bfloat16"
