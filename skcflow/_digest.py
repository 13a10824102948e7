"""SHA-256 digests of named tensors, for model files and extractor identities."""

import hashlib

import torch


def tensor_digest(tensors, document=""):
    """Hex SHA-256 of ``document`` and of every tensor's name, dtype, shape and bytes.

    Tensors are taken in name order, so the digest does not depend on the
    order of a mapping.
    """
    digest = hashlib.sha256(document.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
