"""Tests of :mod:`monai_r2gen.files`: output paths checked before any work, written to a temporary file and renamed,
with the permissions the umask allows."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from monai_r2gen.errors import InputFileError, R2GenError
from monai_r2gen.files import OutputFileError, apply_umask, atomic_output, atomic_write_text, check_output_path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_output_error_is_a_typed_file_error(tmp_path) -> None:
    error = OutputFileError(tmp_path / "x.json", "exists")
    assert isinstance(error, InputFileError) and isinstance(error, R2GenError)
    assert str(error) == f"{tmp_path / 'x.json'}: exists" and error.path == str(tmp_path / "x.json")


def test_check_output_path_accepts_a_new_file_in_a_new_folder(tmp_path) -> None:
    out = tmp_path / "new" / "deeper" / "reports.jsonl"
    assert check_output_path(out, [tmp_path / "missing-input.json"], overwrite=False) == out
    assert not out.parent.exists()  # checking makes nothing


def test_check_output_path_refuses_an_input(tmp_path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("{}\n")
    with pytest.raises(OutputFileError, match="is also an input") as info:
        check_output_path(manifest, [tmp_path / "other.png", manifest], overwrite=True)
    assert info.value.path == str(manifest)
    link = tmp_path / "link.jsonl"
    link.symlink_to(manifest)
    with pytest.raises(OutputFileError, match="is also an input"):
        check_output_path(link, [manifest], overwrite=True)  # the same file by another name
    assert manifest.read_text() == "{}\n"


def test_check_output_path_refuses_an_existing_file_unless_overwrite(tmp_path) -> None:
    out = tmp_path / "scores.json"
    out.write_text("earlier")
    with pytest.raises(OutputFileError, match="exists; give another path or pass --overwrite"):
        check_output_path(out, overwrite=False)
    assert check_output_path(out, overwrite=True) == out
    assert out.read_text() == "earlier"


def test_check_output_path_refuses_a_folder_and_a_path_under_a_file(tmp_path) -> None:
    with pytest.raises(OutputFileError, match="is a folder"):
        check_output_path(tmp_path)
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    for out in (blocker / "reports.jsonl", blocker / "sub" / "reports.jsonl"):
        with pytest.raises(OutputFileError, match="is a file, so no folder can be made there") as info:
            check_output_path(out)
        assert info.value.path == str(out) and str(blocker) in info.value.reason


def test_check_output_path_refuses_a_pipe(tmp_path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputFileError, match="not a regular file"):
        check_output_path(fifo, overwrite=True)
    with pytest.raises(OutputFileError, match="not a regular file"), atomic_output(fifo):
        pass
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_output_path_refuses_a_read_only_folder(tmp_path) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputFileError, match="permission denied"):
            check_output_path(folder / "reports.jsonl")
    finally:
        folder.chmod(0o700)


def test_atomic_output_replaces_the_file_only_when_complete(tmp_path) -> None:
    out = tmp_path / "sub" / "reports.jsonl"
    with atomic_output(out) as handle:
        handle.write("first\n")
        assert not out.exists()  # nothing at the target while writing
        assert len(_leftovers(out.parent)) == 1
    assert out.read_text() == "first\n" and _leftovers(out.parent) == []
    with atomic_output(out, "wb") as handle:
        handle.write(b"second\n")
    assert out.read_bytes() == b"second\n"


@pytest.mark.parametrize("failure", [RuntimeError("damaged model"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_write_leaves_the_earlier_file(tmp_path, failure) -> None:
    out = tmp_path / "reports.jsonl"
    out.write_text("earlier result\n")
    with pytest.raises(type(failure)), atomic_output(out) as handle:
        handle.write("partial line")
        raise failure
    assert out.read_text() == "earlier result\n" and _leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(type(failure)), atomic_output(fresh) as handle:
        handle.write("partial line")
        raise failure
    assert not fresh.exists() and _leftovers(tmp_path) == []


def test_concurrent_writers_do_not_share_a_temporary_file(tmp_path) -> None:
    out = tmp_path / "result.txt"
    barrier = threading.Barrier(4)

    def write(text: str) -> None:
        with atomic_output(out) as handle:
            barrier.wait()
            handle.write(text * 1000)

    threads = [threading.Thread(target=write, args=(c,)) for c in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    content = out.read_text()
    assert len(content) == 1000 and len(set(content)) == 1  # one writer's whole text, not a mix
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask) -> None:
    previous = os.umask(umask)
    try:
        out = atomic_write_text(tmp_path / "shared.json", "{}")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"")
        plain.chmod(0o600)  # as safetensors writes its files
        apply_umask(plain)
    finally:
        os.umask(previous)
    assert out.read_text() == "{}"
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
