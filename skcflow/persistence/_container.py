"""The model file: a safetensors file whose content is checked on every load.

safetensors holds only tensors and a JSON header, parsed strictly, so
reading a file runs no code from it. skcflow puts its own JSON document in
the header's metadata beside a SHA-256 digest of that document and of every
tensor (name, dtype, shape and bytes); a file that does not match its digest
is refused. Files are written atomically: to a temporary file in the
destination's folder, flushed and synced, then renamed over the target, so
a save that fails part way leaves the previous file as it was.
"""

import os
import tempfile
import zipfile

from .._digest import tensor_digest

_DOCUMENT, _DIGEST = "skcflow", "sha256"


class ModelFileError(ValueError):
    """A file that is not a usable skcflow model; the message names it."""

    def __init__(self, path, problem):
        super().__init__(f"{path} {problem}")


def write(path, document, tensors):
    """Write ``document`` (a JSON string) and ``tensors`` to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    # safetensors refuses tensors that share memory; a copy each is saved.
    seen = set()
    for name, t in tensors.items():
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            tensors[name] = t.clone()
        seen.add(tensors[name].untyped_storage().data_ptr())
    metadata = {_DOCUMENT: document, _DIGEST: tensor_digest(tensors, document)}
    atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def atomic_write(path, write):
    """Call ``write(temporary_path)``, then put that file at ``path`` atomically.

    The temporary file is in ``path``'s folder, synced before it is renamed
    over ``path``; if anything fails, it is removed and ``path`` is as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    check_destination(path)
    handle, temporary = tempfile.mkstemp(prefix=".skcflow-", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        os.unlink(temporary)
        if isinstance(exc, Exception):
            raise OSError(
                f"could not write the model to {path} ({exc}); any file there before is unchanged."
            ) from exc
        raise
    _sync_folder(folder)


def _sync_folder(folder):
    # The rename itself is durable only once the folder is synced.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def check_destination(path):
    """Raise a clear error now if a model cannot be written to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write the model to {path}: it is a folder; give a file name.")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write the model to {path}: folder {folder} does not exist.")
    if not os.access(folder, os.W_OK | os.X_OK) or (
        os.path.exists(path) and not os.access(path, os.W_OK)
    ):
        raise PermissionError(f"cannot write the model to {path}: permission denied.")


def read(path):
    """``(document, tensors, digest)`` of a model file, checked against its digest."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.exists(path):
            raise ModelFileError(path, "is not a regular file, so not a skcflow model.")
        raise FileNotFoundError(f"model file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(512)
    size = os.path.getsize(path)
    if not _looks_like_safetensors(head, size):
        raise ModelFileError(path, _what_it_is(path, head))
    try:
        with safe_open(path, framework="pt") as opened:
            metadata = opened.metadata() or {}
            tensors = {name: opened.get_tensor(name) for name in opened.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(path, f"is damaged or truncated: its tensors cannot be read ({exc}).") from exc
    if _DOCUMENT not in metadata:
        raise ModelFileError(path, "is a safetensors file, but not one written by skcflow.save.")
    document, digest = metadata[_DOCUMENT], metadata.get(_DIGEST)
    if digest != tensor_digest(tensors, document):
        raise ModelFileError(
            path,
            "is corrupt: its content does not match the SHA-256 digest written when it was "
            "saved (a damaged copy?); copy it again from a good source, or fit and save the "
            "model again.",
        )
    return document, tensors, digest


def _looks_like_safetensors(head, size):
    if len(head) < 10:
        return False
    length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + length <= size


def _what_it_is(path, head):
    """Words that say what a file that is not a model file looks like."""
    stripped = head.lstrip().lower()
    if head[8:9] == b"{":
        return "is damaged or truncated: its safetensors header does not fit the file's size."
    if not head:
        return "is empty, not a skcflow model (an interrupted copy or download?)."
    if head.startswith(b"version https://git-lfs"):
        return ("is a git-lfs pointer, not the model itself: fetch the file with "
                "'git lfs pull' and load it again.")
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        return ("is an HTML page, not a skcflow model: a download probably saved the web "
                "page instead of the file; download the file itself.")
    for magic, name, tool in ((b"\x1f\x8b", "gzip", "gunzip"), (b"BZh", "bzip2", "bunzip2"),
                              (b"\xfd7zXZ\x00", "xz", "unxz"), (b"\x28\xb5\x2f\xfd", "zstd", "unzstd")):
        if head.startswith(magic):
            return f"is {name}-compressed: decompress it first ({tool}), then load the result."
    if head.startswith(b"PK\x03\x04"):
        return _what_zip_is(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("is a pickle file (pickle or joblib), not a skcflow model file: skcflow never "
                "loads pickles. Model files are written with skcflow.save.")
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return "is a text file, not a skcflow model."
    return "is not a skcflow model file (its content is not a model file's)."


def _what_zip_is(path):
    """Tell skcflow's old torch archives from other zip files, without unpickling."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            header = next((n for n in names if n.endswith("/data.pkl")), None)
            pickled = archive.read(header) if header else b""
    except (zipfile.BadZipFile, OSError):
        return "is a damaged zip archive, not a skcflow model."
    if header is None:
        return "is a zip archive, not a skcflow model: extract the model file from it."
    if b"skcflow-model" in pickled:
        return ("was written by an older skcflow (a PyTorch archive without an integrity "
                "check), which this one no longer reads: fit and save the model again.")
    return ("is a PyTorch file (torch.save), not a skcflow model: models are written with "
            "skcflow.save.")
