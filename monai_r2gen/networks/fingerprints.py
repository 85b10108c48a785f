"""Fingerprints of base model folders: size and first 4 MiB of each weight file plus the cleaned config, so that a
checkpoint that stores only deltas refuses a different base.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from monai_r2gen.errors import ModelConfigError

__all__ = ["fingerprint"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype")
_HEAD_BYTES = 4 << 20


def _hash_file_head(digest: Any, path: Path) -> None:
    digest.update(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_HEAD_BYTES))


def fingerprint(path: str | os.PathLike) -> str:
    """A cheap identity of a base model: sha256 of its config and of its weight files' sizes and first 4 MiB.

    For a directory: ``config.json`` (without volatile keys such as ``transformers_version``) and every weight file
    (name, size, first 4 MiB). For a single weights file: its size and first 4 MiB.

    Raises:
        ModelConfigError: the path does not exist.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _hash_file_head(digest, path)
    elif path.is_dir():
        cfg = path / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelConfigError(f"{cfg}: unreadable model config ({exc})") from exc
            for key in _VOLATILE_CONFIG_KEYS:
                data.pop(key, None)
            digest.update(json.dumps(data, sort_keys=True).encode())
        for weight in sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()):
            digest.update(weight.name.encode())
            _hash_file_head(digest, weight)
    else:
        raise ModelConfigError(f"{path}: base model not found")
    return "sha256:" + digest.hexdigest()
