"""Output files written so that nothing is lost: checked before any work, written to a temporary file, renamed.

Every command and workflow that writes a result goes through :func:`check_output_path` (before it starts working:
the output is not one of its inputs, its folder can be created, it does not silently replace an earlier result) and
:func:`atomic_output` (the content goes to a hidden temporary file beside the target, which replaces the target
only once it is complete, so a run that fails or is killed leaves the earlier file as it was and no partial file).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from monai_r2gen.errors import InputFileError

__all__ = ["OutputFileError", "check_output_path", "atomic_output", "atomic_write_text", "apply_umask"]


class OutputFileError(InputFileError):
    """An output path cannot be written (it is an input, lies under a file, is a folder, or exists)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output_path(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = True
) -> Path:
    """Refuse an output path that would lose data or fail only after the work is done.

    Args:
        path: the output file.
        inputs: files the command reads; the output may be none of them.
        overwrite: whether an existing output file may be replaced (once the new one is complete).

    Returns:
        the output path.

    Raises:
        OutputFileError: naming the path and the reason.
    """
    out = Path(path)
    if out.is_dir():
        raise OutputFileError(out, "is a folder; give a file name")
    for item in inputs:
        item = Path(item)
        if item.exists() and out.exists() and _same_file(out, item):
            raise OutputFileError(out, f"is also an input ({item}); writing it would destroy the input")
    if out.exists() and not out.is_file():
        raise OutputFileError(out, "is not a regular file (a device, pipe or socket); give a file name")
    if out.exists() and not overwrite:
        raise OutputFileError(out, "exists; give another path or pass --overwrite to replace it")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputFileError(out, f"{parent} is a file, so no folder can be made there")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputFileError(out, f"cannot write into {parent} (permission denied)")
            break
    return out


def apply_umask(path: str | os.PathLike, mode: int = 0o666) -> None:
    """Give a written file the permissions the process umask allows (safetensors and tempfile write 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path``, on any error it is removed.

    Args:
        path: the final file; its folder is created when missing.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: text encoding (ignored for bytes).

    Raises:
        OutputFileError: ``path`` is a folder, a device or a pipe.
    """
    out = Path(path)
    if out.exists() and not out.is_file():  # os.replace would replace the folder entry of a device or pipe
        kind = "a folder" if out.is_dir() else "not a regular file (a device, pipe or socket)"
        raise OutputFileError(out, f"is {kind}; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a unique name (not only the pid): two threads writing the same output must not share a temporary file
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    tmp = Path(name)
    kwargs = {} if "b" in mode else {"encoding": encoding}
    try:
        with open(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        apply_umask(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_output`; returns the path."""
    with atomic_output(path) as handle:
        handle.write(text)
    return Path(path)
