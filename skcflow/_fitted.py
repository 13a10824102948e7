"""What an estimator's fitted attributes must be, declared beside the estimator.

Each estimator lists the plain (JSON) fitted attributes it has after ``fit``
as :class:`Field` objects, and the shapes and dtypes its fitted tensors must
have given its parameters, so that :func:`skcflow.load` checks a file's
whole state against the class it claims before anything is scored with it.
"""

import math
from numbers import Integral, Real

import torch


def without_caches(state):
    """An estimator's pickled state without its caches (``_cache_*``
    attributes: rebuilt on demand, and not all of them picklable)."""
    return {key: value for key, value in state.items() if not key.startswith("_cache")}


class Field:
    """A check of one value, with the words that describe what it must be."""

    def __init__(self, text, check):
        self.text = text
        self._check = check

    def __call__(self, value):
        try:
            return bool(self._check(value))
        except (TypeError, ValueError):
            return False


def _is_int(value):
    return isinstance(value, Integral) and not isinstance(value, bool)


def integer(low=0):
    return Field(f"an int >= {low}", lambda v: _is_int(v) and v >= low)


def real(low=-math.inf, high=math.inf):
    where = "" if (low, high) == (-math.inf, math.inf) else f" in [{low}, {high}]"
    return Field(f"a finite number{where}",
                 lambda v: isinstance(v, Real) and not isinstance(v, bool)
                 and math.isfinite(v) and low <= v <= high)


def boolean():
    return Field("true or false", lambda v: isinstance(v, bool))


def text():
    return Field("a string", lambda v: isinstance(v, str))


def none():
    return Field("null", lambda v: v is None)


def one_of(*values):
    return Field(f"one of {list(values)}", lambda v: any(v == x and type(v) is type(x) for x in values))


def shape(n):
    return Field(f"a tuple of {n} positive ints",
                 lambda v: isinstance(v, tuple) and len(v) == n and all(_is_int(s) and s > 0 for s in v))


def sequence(item, kind=list, length=None):
    size = "" if length is None else f" of {length}"
    return Field(f"a {kind.__name__}{size} of {item.text}",
                 lambda v: isinstance(v, kind) and (length is None or len(v) == length)
                 and all(item(x) for x in v))


def optional(field):
    return Field(f"{field.text} or null", lambda v: v is None or field(v))


def mapping(**fields):
    names = ", ".join(fields)
    return Field(f"a mapping of {names}",
                 lambda v: isinstance(v, dict) and set(v) == set(fields)
                 and all(fields[k](x) for k, x in v.items()))


def device():
    return Field("a torch device", lambda v: isinstance(v, torch.device))


class TensorSpec:
    """The shape and dtype a fitted tensor must have, and an optional check
    of its values (``values(tensor) -> bool``, described by ``text``).
    ``array=True``: the attribute is a numpy array, saved as a tensor."""

    def __init__(self, shape, dtype, values=None, text="", array=False):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.values = values
        self.text = text
        self.array = array
