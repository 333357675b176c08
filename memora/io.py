"""Safe reading and atomic writing of files.

Reading: only safetensors, or ``torch.load(weights_only=True)``; a pickle that needs code is refused.
Writing: to a temporary file in the destination folder, then an atomic rename; an existing file is never
overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import InputError, UnsafeFileError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a weights file. Returns ``(object, metadata)``; ``object`` is whatever the file holds
    (a dict of tensors for safetensors, possibly a nested dict for pickles).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a weights file (.safetensors, .pt, .pth, .bin, .ckpt)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return load_file(str(path)), metadata
        except Exception as e:  # safetensors raises its own error types for truncated / corrupt files
            raise InputError(f"{path} is not a readable safetensors file ({e}); is it truncated or corrupt? "
                             "Download it again.") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UnsafeFileError(
                f"{path} is a pickle that needs Python code to load (it contains objects other than tensors). "
                "Files from others are untrusted, so MemoRa loads only plain tensor dicts. Convert it on a machine "
                "you trust with: python -c \"import torch, safetensors.torch as s; "
                "sd = torch.load('IN', weights_only=False); s.save_file({k: v.contiguous() for k, v in "
                "(sd.get('state_dict', sd)).items() if hasattr(v, 'contiguous')}, 'OUT.safetensors')\"") from e
        raise InputError(f"could not read {path} as a torch file ({type(e).__name__}: {e}); is it truncated "
                         "or not a weights file?") from e
    return obj, {}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` atomically.

    On any exception the temporary file is removed, so nothing half-written is left behind.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the finished file gets the usual permissions
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} appeared while writing; refusing to overwrite it")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, *,
                     metadata: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def save_json(obj: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


def save_image(image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save a PIL image atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    return path


def save_torch(obj: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save plain data (tensors, numbers, strings, lists, dicts) readable with ``weights_only=True``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def next_free_path(folder: str | os.PathLike, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``folder/stem_00001.suffix`` etc. if taken: a name that does not exist yet."""
    folder = Path(folder)
    candidate = folder / f"{stem}{suffix}"
    counter = 1
    while candidate.exists():
        candidate = folder / f"{stem}_{counter:05d}{suffix}"
        counter += 1
    return candidate


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks (model files can be gigabytes)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
