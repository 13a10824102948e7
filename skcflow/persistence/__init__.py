"""Model files you can trust: safe, integrity-checked, atomic, self-describing.

joblib and pickle files execute code when loaded: only load them from
sources you trust. :func:`save` writes a model as plain data instead: a
safetensors file (tensors and a strictly parsed JSON header, never code)
holding a JSON document with the parameters, the fitted attributes, the
format version and the model's provenance, and a SHA-256 digest of all of
it. :func:`load` verifies the digest, then checks the whole state against
the class it claims before rebuilding it; any problem is a one-line
``ValueError`` naming the file (and the field). Saves are atomic: a save
that fails, for a full disk say, leaves the previous file intact.

safetensors was chosen over torch's own zip archives because its format is
made for untrusted files: its header is strict JSON, read before any tensor,
with no code path that unpickles anything, and its layout is checked against
the file's size. The digest, which safetensors does not have, catches every
change to the content, so a damaged copy is refused instead of loading with
different scores.
"""

import datetime
import json
import os
import platform

import numpy as np
import torch
from sklearn.utils import Bunch

from .._version import __version__
from ._container import ModelFileError, atomic_write, check_destination, read, write
from ._state import _Where, describe, rebuild

__all__ = ["FORMAT_VERSION", "ModelFileError", "atomic_write", "check_destination", "load",
           "provenance", "read_model_file", "save"]

FORMAT = "skcflow-model"
# 4: safetensors with a SHA-256 digest, provenance and checked state.
# 5: CFlowAD's calibrated levels (log_prob_mean_) and image scores.
# 6: CFlowAD's n_levels='auto' and its choice (level_selection_).
# 7: CFlowAD's training precision (training_dtype, training_dtype_).
# 8: FeatureExtractor's graph.
# 9: CFlowAD's graph.
FORMAT_VERSION = 9


def provenance(model):
    """Who made the model, and from which features."""
    if type(model).__name__ == "AnomalyPipeline":
        extractor = model[0].identity_
    else:
        extractor = getattr(model, "identity_", getattr(model, "extractor_identity_", None))
    return {
        "skcflow": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "extractor": extractor,
    }


def save(model, path):
    """Save a fitted skcflow model (a detector, extractor or pipeline) safely.

    The file is written to a temporary file in the destination's folder,
    synced and renamed over ``path``: if the save fails part way, any file
    that was at ``path`` is left as it was.

    Parameters
    ----------
    model : CFlowAD, PaDiM, SPADE, FeatureExtractor or AnomalyPipeline
        Fitted.
    path : str or path-like
        Destination file.

    Raises
    ------
    NotFittedError
        If the model (or a step of the pipeline) is not fitted.
    OSError
        If the file cannot be written; the message names the path.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from skcflow import FeatureExtractor, PaDiM, make_defects, make_pipeline, save, load
    >>> data = make_defects(n_train=8, n_test=2, image_size=64, random_state=0)
    >>> pipe = make_pipeline(FeatureExtractor(image_size=64, device="cpu"),
    ...                      PaDiM(device="cpu", random_state=0)).fit(data.train.images)
    >>> path = tempfile.mktemp(suffix=".skcflow")
    >>> save(pipe, path)
    >>> bool(np.array_equal(load(path).score_samples(data.test.images),
    ...                     pipe.score_samples(data.test.images)))
    True
    """
    check_destination(path)
    tensors = {}
    description = describe(model, "", tensors)
    document = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                           "provenance": provenance(model), "model": description},
                          allow_nan=False, sort_keys=True)
    write(path, document, tensors)


def read_model_file(path):
    """Load a model file and say where it comes from.

    Returns
    -------
    info : Bunch
        ``model`` (as :func:`load` returns it), ``provenance`` (skcflow,
        torch, numpy and Python versions, save time, and the feature
        extractor's identity), ``format_version`` and ``sha256``, the digest
        every load verifies.
    """
    path = os.fspath(path)
    document, tensors, digest = read(path)
    where = _Where(path, "header")
    try:
        header = json.loads(document)
    except json.JSONDecodeError as exc:
        raise where.error(f"is not valid JSON ({exc}).") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise where.error("does not describe a skcflow model.")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise where.at("format_version").error(f"must be an int, got {version!r}.")
    if version > FORMAT_VERSION:
        raise ModelFileError(path, f"has format version {version}, newer than this skcflow "
                                   f"({__version__}) reads; upgrade skcflow.")
    if version < FORMAT_VERSION:
        raise ModelFileError(path, f"has format version {version}, written by an older skcflow "
                                   f"whose models this one ({__version__}) would rebuild "
                                   "differently; fit and save the model again.")
    if not isinstance(header.get("provenance"), dict):
        raise where.at("provenance").error("must be a mapping.")
    model = rebuild(header.get("model"), tensors, where.at("model"))
    return Bunch(model=model, provenance=header["provenance"], format_version=version, sha256=digest)


def load(path):
    """Load a model written by :func:`save`, on the CPU.

    The file's SHA-256 digest is verified and its whole state checked
    against the class it claims (parameters, fitted attributes, every
    tensor's shape, dtype and finiteness) before the model is rebuilt. No
    code is read from the file.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    model : the saved estimator, fitted

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a valid skcflow model file: the message names it
        and says what it looks like (an HTML page, a git-lfs pointer, a
        compressed file, a pickle...) or what is wrong in it.
    """
    return read_model_file(path).model
