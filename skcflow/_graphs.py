"""Frozen TorchScript graphs of modules, for inference on a CPU.

A module run operator by operator lets go of Python's lock and takes it
back around each operator, so workers running small operators side by side
wait on each other (:mod:`skcflow.threads`). A frozen graph runs its
operators in C++ and computes exactly what the module does: its passes
that change numerics (batch norm folded into the convolutions before it)
are off. Folded, efficientnet_lite0 encoded 1.2 times as many images again,
but bfloat16 convolutions of the folded weights moved magnetic tiles'
pixel AUROC by 0.0028 from float32's (``bench_accuracy.py`` at commit
f58f3d5), against 0.0016 unfolded (``benchmarks/results/accuracy.md``),
and float32 features by up to 2e-4.

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
    with _BUILDING, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "`torch.jit.", FutureWarning)
        return torch.jit.freeze(torch.jit.trace(module, probes), optimize_numerics=False)
