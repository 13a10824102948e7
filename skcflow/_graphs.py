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

The encoder runs as one graph (``FeatureExtractor(graph=True)``), and
CFlowAD's decoders as one per level and per number of images a worker
scores at once, beside one of the levels' aggregation
(``CFlowAD(graph=True)``, through :class:`MethodGraphs`).

``torch.jit`` is deprecated in favour of ``torch.compile`` and
``torch.export``, whose graphs run their operators through Python again
(or are compiled to C++ for a minute at each start); torch is pinned, and
what uses a graph can do without (``graph=False``).
"""

import threading
import warnings

import torch
from torch import nn

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
        # No check run: it traces the module again, which kept 27 MB more
        # resident for one of CFlowAD's levels; tests compare graphs and
        # modules instead.
        return torch.jit.freeze(torch.jit.trace(module, probes, check_trace=False), optimize_numerics=False)


class _Bound(nn.Module):
    """``module.method(*bound, *tensors)`` as a module of the tensors: what a graph traces."""

    def __init__(self, module, method, bound):
        super().__init__()
        self.module, self.method, self.bound = module, method, bound

    def forward(self, *tensors):
        return getattr(self.module, self.method)(*self.bound, *tensors)


class MethodGraphs:
    """Frozen graphs of a module's methods, each built at its first call.

    A graph holds for one method, the Python values before its tensors and
    the tensors' shapes and dtypes: ``graphs("log_prob", 0, x)`` is
    ``module.log_prob(0, x)``, through the graph for level 0 and ``x``'s
    shape. The graphs use the module's own tensors (a frozen graph's
    constants share their storage), so they cost memory only for what the
    module computes once and folds in.
    """

    def __init__(self, module):
        self.module = module
        self._graphs = {}
        # Workers that need the same graph at once build it once.
        self._lock = threading.Lock()

    def __call__(self, method, *args):
        split = next((k for k, arg in enumerate(args) if isinstance(arg, torch.Tensor)), len(args))
        bound, tensors = args[:split], args[split:]
        key = (method, bound, *((tuple(t.shape), t.dtype) for t in tensors))
        graph = self._graphs.get(key)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(key)
                if graph is None:
                    graph = self._graphs[key] = frozen_graph(_Bound(self.module, method, bound).eval(), *tensors)
        return graph(*tensors)
