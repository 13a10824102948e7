"""Estimators as JSON and tensors, and back, checked against their classes.

:func:`describe` turns a fitted skcflow estimator (or pipeline) into a JSON
description and named tensors. :func:`rebuild` does the reverse and checks,
before anything can be scored, the whole state against the class the file
claims: the parameters against the estimator's own
``_parameter_constraints``; every fitted attribute against the estimator's
``_fitted_schema``; every tensor's name, shape, dtype and values against
``_fitted_tensor_specs`` and the modules the parameters imply; and finally
the estimator's own consistency checks (``_check_fitted``). Every problem is
a :class:`~skcflow.persistence._container.ModelFileError` naming the file
and the field.
"""

import os

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
# Private: the error _validate_params raises has no public name.
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._fitted import TensorSpec
from ._container import ModelFileError


def _classes():
    from ..cflow import CFlowAD
    from ..features import FeatureExtractor
    from ..padim import PaDiM
    from ..pipeline import AnomalyPipeline
    from ..spade import SPADE

    return {cls.__name__: cls for cls in (CFlowAD, PaDiM, SPADE, FeatureExtractor, AnomalyPipeline)}


# ---------------------------------------------------------------- saving


def _json_value(value, what):
    """``value`` as JSON-compatible data, tagging tuples, mappings and devices."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not np.isfinite(value):
            raise ValueError(f"cannot save {what}: it is {value}.")
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return _json_value(value.item(), what)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, tuple):
        return {"tuple": [_json_value(v, what) for v in value]}
    if isinstance(value, list):
        return [_json_value(v, what) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"mapping": {k: _json_value(v, what) for k, v in value.items()}}
    raise TypeError(f"cannot save {what} of type {type(value).__name__}: {value!r}")


def describe(estimator, prefix, tensors):
    """JSON description of one fitted estimator; its tensors go into ``tensors``."""
    name = type(estimator).__name__
    if name not in _classes():
        raise TypeError(f"skcflow.save handles skcflow models only, not {name}.")
    if name == "AnomalyPipeline":
        return {
            "class": name,
            "steps": [[step, describe(est, f"{prefix}{step}.", tensors)] for step, est in estimator.steps],
        }
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise NotFittedError(
            f"this {name} is not fitted: fit it before saving it (skcflow.save writes fitted models)."
        ) from None
    params = {k: _json_value(v, f"parameter {k!r}") for k, v in estimator.get_params().items()}
    fitted, modules, arrays, tensor_lists = {}, [], [], {}
    for key, value in vars(estimator).items():
        if key.startswith("_") or not key.endswith("_"):
            continue
        if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
            tensor_lists[key] = len(value)
            for i, t in enumerate(value):
                tensors[f"{prefix}{key}.{i}"] = t
        elif isinstance(value, nn.Module):
            modules.append(key)
            for k, t in value.state_dict().items():
                tensors[f"{prefix}{key}.{k}"] = t
        elif isinstance(value, torch.Tensor):
            tensors[f"{prefix}{key}"] = value
        elif isinstance(value, np.ndarray):
            arrays.append(key)
            tensors[f"{prefix}{key}"] = torch.from_numpy(np.ascontiguousarray(value))
        else:
            fitted[key] = _json_value(value, f"fitted attribute {key!r}")
    return {"class": name, "params": params, "fitted": fitted, "modules": modules, "arrays": arrays,
            "tensor_lists": tensor_lists}


# ---------------------------------------------------------------- loading


class _Where:
    """The file and the field a problem is found in."""

    def __init__(self, path, field):
        self.path, self.field = path, field

    def at(self, field):
        return _Where(self.path, f"{self.field}.{field}")

    def error(self, problem):
        return ModelFileError(self.path, f"is not a valid skcflow model: {self.field} {problem}")


def _expect_mapping(value, keys, where, optional=()):
    if not isinstance(value, dict):
        raise where.error(f"must be a mapping, got {type(value).__name__}.")
    missing = set(keys) - set(value) - set(optional)
    unknown = set(value) - set(keys)
    if missing or unknown:
        raise where.error(
            f"must have the keys {sorted(keys)}: "
            + ", ".join(p for p in (f"{sorted(missing)} missing" if missing else "",
                                    f"{sorted(unknown)} unknown" if unknown else "") if p) + "."
        )
    return value


def _decode(value, where):
    """Strict inverse of :func:`_json_value`."""
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and isinstance(value.get("tuple"), list):
        return tuple(_decode(v, where) for v in value["tuple"])
    if len(value) == 1 and isinstance(value.get("mapping"), dict):
        return {k: _decode(v, where) for k, v in value["mapping"].items()}
    if len(value) == 1 and isinstance(value.get("device"), str):
        try:
            return torch.device(value["device"])
        except RuntimeError:
            pass
    raise where.error(f"holds a value skcflow does not write: {value!r}.")


def rebuild(description, tensors, where, prefix=""):
    """The estimator a :func:`describe` description stands for, checked."""
    classes = _classes()
    if not isinstance(description, dict):
        raise where.error(f"must be a mapping, got {type(description).__name__}.")
    name = description.get("class")
    if not isinstance(name, str) or name not in classes:
        raise where.error(f"names an unknown model class {name!r}; skcflow rebuilds only "
                          f"{', '.join(sorted(classes))}.")
    if name == "AnomalyPipeline":
        return _rebuild_pipeline(description, tensors, where, prefix, classes)
    _expect_mapping(description, ["class", "params", "fitted", "modules", "arrays", "tensor_lists"], where)
    cls = classes[name]
    estimator = _with_params(cls, description["params"], where.at("params"))
    _set_fitted(estimator, description["fitted"], where.at("fitted"))
    own = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
    _set_tensors(estimator, description, own, where)
    problem = estimator._check_fitted()
    if problem:
        raise where.error(f"is inconsistent: {problem}")
    if "device_" in vars(estimator):
        # Models load on the CPU whatever they were fitted on.
        estimator.device_ = torch.device("cpu")
    return estimator


def _rebuild_pipeline(description, tensors, where, prefix, classes):
    _expect_mapping(description, ["class", "steps"], where)
    steps = description["steps"]
    if not isinstance(steps, list) or len(steps) < 2:
        raise where.error("steps must be a list of at least two [name, step] pairs.")
    rebuilt = []
    for i, step in enumerate(steps):
        at = where.at(f"steps[{i}]")
        if not (isinstance(step, list) and len(step) == 2 and isinstance(step[0], str)
                and step[0].isidentifier()):
            raise at.error("must be a [name, step] pair with an identifier as name.")
        rebuilt.append((step[0], rebuild(step[1], tensors, at, f"{prefix}{step[0]}.")))
    pipeline = classes["AnomalyPipeline"](rebuilt)
    extractor, detector = pipeline[0], pipeline[-1]
    if type(extractor).__name__ != "FeatureExtractor" or len(rebuilt) != 2 or not hasattr(detector, "offset_"):
        raise where.error("must be a FeatureExtractor followed by a detector.")
    if detector.extractor_identity_ not in (None, extractor.identity_):
        raise where.error("pairs a detector with another feature extractor than it was fitted on.")
    return pipeline


def _with_params(cls, params, where):
    expected = cls().get_params()
    _expect_mapping(params, expected, where)
    estimator = cls(**{k: _decode(v, where.at(k)) for k, v in params.items()})
    try:
        # The estimator's own check of its parameters, as its fit runs it;
        # scikit-learn has no public entry point to it.
        estimator._validate_params()
    except InvalidParameterError as exc:
        raise where.error(f"are invalid: {exc}") from None
    return estimator


def _set_fitted(estimator, fitted, where):
    schema = estimator._fitted_schema()
    _expect_mapping(fitted, schema, where)
    for key, value in fitted.items():
        value = _decode(value, where.at(key))
        if not schema[key](value):
            raise where.at(key).error(f"must be {schema[key].text}, got {value!r}.")
        setattr(estimator, key, value)


def _set_tensors(estimator, description, own, where):
    try:
        specs = estimator._fitted_tensor_specs()
        modules = estimator._empty_modules()
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise where.at("fitted").error(f"is inconsistent with the parameters ({exc}).") from None
    lists = {k: v for k, v in specs.items() if isinstance(v, list)}
    arrays = [k for k, v in specs.items() if isinstance(v, TensorSpec) and v.array]
    if (sorted(description["modules"]) != sorted(modules) or sorted(description["arrays"]) != sorted(arrays)
            or description["tensor_lists"] != {k: len(v) for k, v in lists.items()}):
        raise where.error("lists other modules, arrays or tensor lists than its class and parameters imply.")
    expected = {}
    for key, spec in specs.items():
        if isinstance(spec, list):
            expected.update({f"{key}.{i}": s for i, s in enumerate(spec)})
        else:
            expected[key] = spec
    for key, module in modules.items():
        expected.update({f"{key}.{k}": TensorSpec(t.shape, t.dtype) for k, t in module.state_dict().items()})
    missing, unknown = set(expected) - set(own), set(own) - set(expected)
    if missing or unknown:
        raise where.error(f"has other tensors than its class implies: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unknown)[:5]}.")
    for key, spec in expected.items():
        _check_tensor(own[key], spec, where.at(key))
    for key, spec in specs.items():
        if isinstance(spec, list):
            setattr(estimator, key, [own[f"{key}.{i}"] for i in range(len(spec))])
        else:
            setattr(estimator, key, own[key].numpy() if spec.array else own[key])
    for key, module in modules.items():
        module.load_state_dict({k[len(key) + 1:]: t for k, t in own.items() if k.startswith(key + ".")})
        setattr(estimator, key, module.eval())


def _check_tensor(tensor, spec, where):
    if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
        raise where.error(f"must be a {spec.dtype} tensor of shape {spec.shape}, got "
                          f"{tensor.dtype} of shape {tuple(tensor.shape)}.")
    if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
        raise where.error("holds NaN or infinite values.")
    if spec.values is not None and not spec.values(tensor):
        raise where.error(f"must hold {spec.text}.")
