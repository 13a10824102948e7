"""Saving and loading fitted models without running code from the file.

joblib and pickle files execute code when loaded: only load them from
sources you trust. :func:`save` writes a model as plain data instead:
tensors, read back with ``torch.load(weights_only=True)``, and a JSON
document with the parameters, the fitted scalars and a format version.
:func:`load` rebuilds only the classes skcflow knows, so a tampered file can
fail to load but cannot run code.
"""

import json
import os
import pickle
import zipfile

import numpy as np
import torch
from torch import nn

from ._version import __version__

FORMAT = "skcflow-model"
FORMAT_VERSION = 2


def _classes():
    from .cflow import CFlowAD
    from .features import FeatureExtractor
    from .padim import PaDiM
    from .pipeline import AnomalyPipeline
    from .spade import SPADE

    return {cls.__name__: cls for cls in (CFlowAD, PaDiM, SPADE, FeatureExtractor, AnomalyPipeline)}


def _json_value(value, what):
    """``value`` as JSON-compatible data, tagging tuples and devices."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, tuple):
        return {"tuple": [_json_value(v, what) for v in value]}
    if isinstance(value, list):
        return [_json_value(v, what) for v in value]
    raise TypeError(f"cannot save {what} of type {type(value).__name__}: {value!r}")


def _from_json(value):
    if isinstance(value, dict):
        if "tuple" in value:
            return tuple(_from_json(v) for v in value["tuple"])
        return torch.device(value["device"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _describe(estimator, prefix, tensors):
    """JSON description of one estimator; its tensors go into ``tensors``."""
    name = type(estimator).__name__
    if name not in _classes():
        raise TypeError(f"skcflow.save handles skcflow models only, not {name}.")
    if name == "AnomalyPipeline":
        return {
            "class": name,
            "steps": [
                [step, _describe(est, f"{prefix}{step}.", tensors)]
                for step, est in estimator.steps
            ],
        }
    params = {k: _json_value(v, f"parameter {k!r}") for k, v in estimator.get_params().items()}
    fitted, modules, arrays, tensor_lists = {}, [], [], {}
    for key, value in vars(estimator).items():
        if key.startswith("_") or not key.endswith("_"):
            continue
        if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
            tensor_lists[key] = len(value)
            for i, t in enumerate(value):
                tensors[f"{prefix}{key}.{i}"] = t.detach().cpu()
        elif isinstance(value, nn.Module):
            modules.append(key)
            for k, t in value.state_dict().items():
                tensors[f"{prefix}{key}.{k}"] = t.detach().cpu()
        elif isinstance(value, torch.Tensor):
            tensors[f"{prefix}{key}"] = value.detach().cpu()
        elif isinstance(value, np.ndarray):
            arrays.append(key)
            tensors[f"{prefix}{key}"] = torch.from_numpy(np.ascontiguousarray(value))
        else:
            fitted[key] = _json_value(value, f"fitted attribute {key!r}")
    return {"class": name, "params": params, "fitted": fitted, "modules": modules, "arrays": arrays,
            "tensor_lists": tensor_lists}


def _rebuild(description, prefix, tensors):
    classes = _classes()
    name = description["class"]
    if name not in classes:
        raise ValueError(f"unknown model class {name!r}")
    cls = classes[name]
    if name == "AnomalyPipeline":
        return cls([(step, _rebuild(d, f"{prefix}{step}.", tensors))
                    for step, d in description["steps"]])
    estimator = cls(**{k: _from_json(v) for k, v in description["params"].items()})
    for key, value in description["fitted"].items():
        setattr(estimator, key, _from_json(value))
    if "device_" in description["fitted"]:
        # Models load on the CPU whatever they were fitted on.
        estimator.device_ = torch.device("cpu")
    for key in description["arrays"]:
        setattr(estimator, key, tensors[f"{prefix}{key}"].numpy())
    own = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
    for key, tensor in own.items():
        if "." not in key and key not in description["arrays"]:
            setattr(estimator, key, tensor)
    for key, length in description.get("tensor_lists", {}).items():
        setattr(estimator, key, [own[f"{key}.{i}"] for i in range(length)])
    for key, module in estimator._empty_modules().items():
        state = {k[len(key) + 1:]: t for k, t in own.items() if k.startswith(key + ".")}
        module.load_state_dict(state)
        setattr(estimator, key, module.eval())
    return estimator


def save(model, path):
    """Save a fitted skcflow model (a detector, extractor or pipeline) safely.

    Parameters
    ----------
    model : CFlowAD, PaDiM, SPADE, FeatureExtractor or AnomalyPipeline
        Fitted.
    path : str or path-like
        Destination file.

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
    tensors = {}
    description = _describe(model, "", tensors)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "skcflow_version": __version__, "model": description}
    torch.save({"header": json.dumps(header), "tensors": tensors}, os.fspath(path))


def load(path):
    """Load a model written by :func:`save`, on the CPU.

    Only tensors and JSON are read (``torch.load(weights_only=True)``): a
    file holding pickled Python objects is refused rather than executed.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    model : the saved estimator, fitted
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} holds Python objects that would run code when loaded; refusing it. "
            "skcflow model files contain only tensors and JSON (write them with skcflow.save)."
        ) from exc
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"{path} is not a readable skcflow model file (truncated or corrupt): {exc}") from exc
    try:
        header = json.loads(content["header"])
        if header.get("format") != FORMAT:
            raise ValueError("no skcflow header")
        if header["format_version"] > FORMAT_VERSION:
            raise ValueError(
                f"format version {header['format_version']} is newer than this skcflow "
                f"({__version__}) reads; upgrade skcflow."
            )
        if header["format_version"] < FORMAT_VERSION:
            # Version 1 predates CFlowAD's n_levels and neighborhood: its
            # models would load with today's defaults and score differently.
            raise ValueError(
                f"format version {header['format_version']} was written by an older skcflow "
                f"whose models this one ({__version__}) would rebuild differently; fit and "
                "save the model again."
            )
        return _rebuild(header["model"], "", content["tensors"])
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid skcflow model file: {exc}") from exc
