"""Device resolution shared by the feature extractor and the detectors."""

import contextlib

import torch


def resolve_device(device):
    """Turn a user's ``device`` parameter into a :class:`torch.device`.

    ``"auto"`` picks CUDA when it is available and the CPU otherwise. Asking
    explicitly for a CUDA device on a machine without one is an error rather
    than a silent fall back, so that a user who expects a GPU learns at once
    that they do not have it.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'auto', 'cpu', "
            "'cuda' or 'cuda:<index>'."
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available on this "
                "machine; use device='auto' to fall back to the CPU."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) are present."
            )
    return resolved


DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(dtype, device):
    """Turn an ``inference_dtype`` parameter into a dtype name for ``device``.

    ``"auto"`` is half precision on CUDA (bfloat16 where the device supports
    it, else float16) and float32 on CPUs. On a CPU, float32 keeps what the
    package promises exactly: ONNX exports that compute what skcflow
    computes, and the full precision of 10 to 16-bit images (bfloat16 keeps
    8 significant bits); bfloat16 is an option, 1.41 (batch 1) and 1.57
    (batch 32) times as fast for efficientnet_lite0 on an Intel Xeon with
    AMX (``benchmarks/results/speed.md``).
    """
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def autocast(dtype, device):
    """A :func:`torch.autocast` to ``dtype`` (a name) on ``device``; none for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def resolve_training_dtype(dtype, device):
    """Turn CFlowAD's ``training_dtype`` parameter into a dtype name for ``device``.

    ``"auto"`` is bfloat16 on CPUs whose matrix units compute it natively
    (AVX512-BF16 or AMX-BF16), where it shortens CFlowAD's fit without
    moving the fitted model's accuracy
    (``benchmarks/results/levels.md``), and float32 elsewhere, where it
    has not been measured to help: CPUs without native bfloat16 convert
    every product, and on CUDA training is fast in float32.
    """
    if dtype != "auto":
        return dtype
    if device.type != "cpu":
        return "float32"
    capabilities = torch.cpu.get_capabilities()
    native = capabilities.get("avx512_bf16") or capabilities.get("amx_bf16")
    return "bfloat16" if native else "float32"
