"""Frozen TorchScript graphs of modules, for inference on a CPU.

A module run operator by operator lets go of Python's lock and takes it
back around each operator, so workers running small operators side by side
wait on each other (:mod:`skcflow.threads`). A frozen graph runs its
operators in C++, with batch norm folded into the convolutions before them:
efficientnet_lite0 at 256 px encodes 1.4 times as many images on two
workers in float32, 1.7 times in bfloat16 (``benchmarks/results/speed.md``).

``torch.jit`` is deprecated in favour of ``torch.compile`` and
``torch.export``, whose graphs run their operators through Python again
(or are compiled to C++ for a minute at each start); torch is pinned, and
what uses a graph can do without (``FeatureExtractor(graph=False)``).
"""

import threading
import warnings

import torch

# warnings.catch_warnings changes process-wide filters: one build at a time.
_BUILDING = threading.Lock()


def frozen_graph(module, *probes):
    """``module`` (in eval mode) traced on ``probes`` and frozen.

    The graph holds for inputs of the probes' shapes: Python numbers derived
    from them (sizes, paddings) become constants, which is what the tracer's
    warnings are about.
    """
    with _BUILDING, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "`torch.jit.", FutureWarning)
        # Copies with the same strides: tensors made in inference mode
        # cannot be traced.
        probes = tuple(torch.empty_like(p).zero_() for p in probes)
        return torch.jit.freeze(torch.jit.trace(module, probes))
