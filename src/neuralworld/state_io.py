"""Writing model and training state to disk: atomically, and never through pickle.

Every file goes to a temporary name in the same folder, is flushed to disk and
then renamed over the target, so a crash or a full disk leaves the previous
file whole. Tensors are stored with safetensors (a JSON header + raw bytes:
loading cannot run code); nested state such as an optimizer's ``state_dict`` is
flattened into named tensors plus a JSON skeleton stored in the same file's
metadata. A SHA-256 of the file is returned on save and checked on load when
the caller knows it, so a tampered or truncated file is refused by name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch


class StateError(Exception):
    """A state file is missing, truncated, tampered with or could not be written."""


# ---------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise StateError(f"disk full while writing {path}; the previous version is intact") from None
        raise StateError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StateError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateError(f"{what} {path} is damaged (not valid JSON: {e})") from None


# ---------------------------------------------------------------------------
# nested state ↔ flat tensors + JSON skeleton
# ---------------------------------------------------------------------------
def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested dicts/lists of tensors and plain values into
    ``{dotted.name: tensor}`` and a JSON-able skeleton naming each tensor."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, key: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[key] = node.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(node, Mapping):
            if any(not isinstance(k, (str, int)) for k in node):
                raise TypeError(f"state keys must be str or int at {key!r}")
            return {
                "__dict__": [[k, walk(v, f"{key}.{k}" if key else str(k))] for k, v in node.items()]
            }
        if isinstance(node, (list, tuple)):
            return {"__list__": [walk(v, f"{key}.{i}" if key else str(i)) for i, v in enumerate(node)]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {key!r}")

    skeleton = walk(state, prefix)
    return tensors, skeleton


def unflatten_state(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    def build(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                name = node["__tensor__"]
                if name not in tensors:
                    raise StateError(f"state file lacks tensor {name!r}")
                return tensors[name]
            if "__dict__" in node:
                return {k: build(v) for k, v in node["__dict__"]}
            if "__list__" in node:
                return [build(v) for v in node["__list__"]]
        return node

    return build(skeleton)


# ---------------------------------------------------------------------------
# safetensors files
# ---------------------------------------------------------------------------
def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """Write tensors (+ JSON ``meta``) atomically; returns the file's SHA-256."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={"neuralworld": json.dumps(dict(meta or {}))})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: str | os.PathLike, *, sha256: str | None = None, what: str = "state file") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by ``save_tensors``; clear errors for every kind of damage."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{what} {path} does not exist") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise StateError(f"{what} {path} does not match its recorded SHA-256: it was changed or damaged after saving")
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("neuralworld", "{}"))
    except Exception as e:  # safetensors raises its own error types for truncation etc.
        raise StateError(f"{what} {path} is truncated or not a safetensors file ({type(e).__name__}: {e})") from None
    return tensors, meta
