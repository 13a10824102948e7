"""Comparison reports people can look at: a table, ROC curves, image panels.

Used by ``skcflow compare``; needs matplotlib (``pip install skcflow[plot]``).
"""

import html
import os

import numpy as np
import pandas as pd

from .overlay import overlay

COLUMNS = ["model", "image AUROC", "pixel AUROC", "AUPRO", "fit s",
           "inference images/s", "fitted MB"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "reports need matplotlib: pip install 'skcflow[plot]'"
        ) from exc
    return plt


def save_panel(path, image, mask, anomaly_map, predicted, vmin, vmax, title):
    """Input, ground truth, heat-map overlay and predicted mask side by side.

    ``mask=None`` (no ground truth) leaves its place blank, titled so.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.9))
    pictures = [image, mask, overlay(image, anomaly_map, vmin, vmax), predicted]
    names = ["input", "ground truth" if mask is not None else "no ground truth",
             "anomaly map", "predicted mask"]
    for ax, picture, name in zip(axes, pictures, names):
        if picture is not None:
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1 if picture.ndim == 2 else None)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_roc(path, curves):
    """Image-level ROC curves, one per model: ``{name: (fpr, tpr, auc)}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("image-level ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_score_distributions(path, models):
    """Histograms of each model's scores: training (leave-one-out), good and
    defective test images, with the decision threshold.

    ``models``: ``{name: (training, normal, anomalous, threshold)}``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.2), squeeze=False)
    for ax, (name, (training, normal, anomalous, threshold)) in zip(axes[0], models.items()):
        values = [v for v in (training, normal, anomalous) if len(v)]
        bins = np.histogram_bin_edges(np.concatenate(values), bins=30)
        for scores, label in ((training, "training (left out)"), (normal, "good test"),
                              (anomalous, "defective test")):
            if len(scores):
                ax.hist(scores, bins=bins, alpha=0.5, density=True, label=label)
        ax.axvline(threshold, color="black", linestyle="--", label="threshold")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("anomaly score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_calibration(path, models):
    """Observed false-alarm rate of the good test images against the p-value
    level: under the conformal guarantee it stays at or below the diagonal.

    ``models``: ``{name: p-values of the good test images}``.
    """
    plt = _pyplot()
    alphas = np.linspace(0.01, 0.5, 50)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, p in models.items():
        ax.plot(alphas, [(p <= a).mean() for a in alphas], label=f"{name} ({len(p)} good images)")
    ax.plot([0, 0.5], [0, 0.5], color="gray", linestyle=":", label="expected at most")
    ax.set_xlabel("false-alarm rate asked for (p-value level)")
    ax.set_ylabel("observed on good test images")
    ax.set_title("p-value calibration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_index(folder, title, table, sections):
    """``index.html`` with the results table, and each section's ROC plot and panels.

    Parameters
    ----------
    folder : str
        Report folder; image paths are relative to it.
    title : str
    table : pandas.DataFrame
    sections : list of dict
        One per category: ``heading`` (None for a single section),
        ``folder`` (its files' sub-folder, "" for the report folder) and
        ``panels``, a list of ``(caption, file name)`` pairs.
    """
    parts = []
    for section in sections:
        prefix = f"{section['folder']}/" if section["folder"] else ""
        figures = "\n".join(
            f'<figure><img src="{html.escape(prefix + name)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, name in section["panels"]
        )
        heading = f"<h2>{html.escape(section['heading'])}</h2>" if section["heading"] else ""
        parts.append(f"""{heading}
<h3>Image-level ROC</h3>
<img src="{html.escape(prefix)}roc.png" alt="ROC curves">
<h3>Scores and thresholds</h3>
<img src="{html.escape(prefix)}scores.png" alt="score distributions">
<h3>Calibration of the p-values on the good test images</h3>
<img src="{html.escape(prefix)}calibration.png" alt="p-value calibration">
<h3>Best and worst cases</h3>
{figures}""")
    body = "\n".join(parts)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
figure {{ margin: 1em 0; }} figcaption {{ font-size: 0.9em; color: #444; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Results</h2>
{table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, na_rep="n/a")}
<p>Data: <a href="results.csv">results.csv</a></p>
{body}
</body></html>
"""
    with open(os.path.join(folder, "index.html"), "w") as f:
        f.write(page)


def results_table(rows):
    """The comparison table, in the column order of every report (by category first
    when there are several)."""
    columns = (["category"] if any("category" in row for row in rows) else []) + COLUMNS
    return pd.DataFrame(rows, columns=columns)
