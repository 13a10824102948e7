import csv
import subprocess
import sys

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
