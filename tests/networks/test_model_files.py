"""Damaged model directories give a ModelFileError naming the file; saving is atomic and respects the umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import ModelFileError
from monai_r2gen.files import OutputFileError
from monai_r2gen.networks import model_files
from monai_r2gen.networks.generator import RadiologyReportGenerator

from .conftest import tiny_config


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny generator after stage 2 (LLM built from a config, so ``llm/`` and ``llm_lora/`` are both written)."""
    model = RadiologyReportGenerator.from_config(tiny_config(tokenizer_path=str(tokenizer_dir)))
    apply_stage(model, "stage2")
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("saved") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture()
def model_copy(saved_model, tmp_path) -> Path:
    """A fresh copy of the saved model to damage."""
    path = tmp_path / "model"
    shutil.copytree(saved_model, path)
    return path


def _load_error(model_dir: Path) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        RadiologyReportGenerator.from_pretrained(model_dir)
    return info.value


def _meta(model_dir: Path) -> dict:
    return json.loads((model_dir / "generator.json").read_text())


def test_intact_copy_loads(model_copy) -> None:
    model = RadiologyReportGenerator.from_pretrained(model_copy)
    assert model.has_llm_lora


# ------------------------------------------------------------------------------------------------------------------
# modules.safetensors
# ------------------------------------------------------------------------------------------------------------------


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _first_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _only_the_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: 8 + int.from_bytes(data[:8], "little")])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 12\n")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_random_bytes, "not a safetensors file"),
        (_first_half, "truncated"),
        (_only_the_header, "truncated"),
        (_empty, "empty"),
        (_text, "not a safetensors file"),
        (Path.unlink, "missing"),
    ],
)
def test_damaged_modules_file_is_named(model_copy, damage: Callable[[Path], None], reason: str) -> None:
    damage(model_copy / "modules.safetensors")
    error = _load_error(model_copy)
    assert error.path == str(model_copy / "modules.safetensors") and reason in error.reason
    assert str(model_copy / "modules.safetensors") in str(error)


class _Trap:
    """Unpickling this object creates a file: a loader that unpickles leaves the marker behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_renamed_safetensors_is_refused_and_never_unpickled(model_copy, tmp_path) -> None:
    marker = tmp_path / "unpickled"
    torch.save({"projector.weight": torch.zeros(2), "trap": _Trap(marker)}, model_copy / "modules.safetensors")
    error = _load_error(model_copy)
    assert "pickle" in error.reason and error.path.endswith("modules.safetensors")
    assert not marker.exists()


def test_pickle_beside_a_missing_safetensors_is_not_loaded(model_copy, tmp_path) -> None:
    marker = tmp_path / "unpickled"
    (model_copy / "llm" / "model.safetensors").unlink()
    torch.save({"trap": _Trap(marker)}, model_copy / "llm" / "model.bin")
    error = _load_error(model_copy)
    assert error.path == str(model_copy / "llm" / "model.safetensors") and "pickled" in error.reason
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------------------------
# generator.json
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, reason",
    [
        ("[]", "JSON list"),
        ("{not json", "not JSON"),
        ("", "not JSON"),
        ('"a string"', "JSON str"),
        (b"\xff\xfe\x00".decode("latin-1"), "not JSON"),
    ],
)
def test_unreadable_generator_json_is_named(model_copy, text: str, reason: str) -> None:
    (model_copy / "generator.json").write_text(text, encoding="latin-1")
    error = _load_error(model_copy)
    assert error.path == str(model_copy / "generator.json") and reason in error.reason


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda m: m.pop("contents"), "lacks the key(s) ['contents']"),
        (lambda m: m.pop("config"), "lacks the key(s) ['config']"),
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.update(contents=[]), "'contents' record is malformed"),
        (lambda m: m["contents"].update(llm="weights"), "'contents' record is malformed"),
        (lambda m: m.update(config="small"), "'config' is not an object"),
        (lambda m: m["config"].update(vision_tower="x"), "unknown generator settings"),
        (lambda m: m["config"].update(max_views="two"), "not a valid generator config"),
        (lambda m: m.update(trained="llm"), "'trained' is not a JSON list"),
        (lambda m: m.update(num_image_tokens="4"), "'num_image_tokens' is not a JSON int"),
    ],
)
def test_generator_json_with_missing_or_wrong_keys_is_named(model_copy, edit, reason: str) -> None:
    meta = _meta(model_copy)
    edit(meta)
    (model_copy / "generator.json").write_text(json.dumps(meta))
    error = _load_error(model_copy)
    assert error.path == str(model_copy / "generator.json") and reason in error.reason


def test_missing_generator_json_and_missing_directory(model_copy, tmp_path) -> None:
    (model_copy / "generator.json").unlink()
    error = _load_error(model_copy)
    assert error.path == str(model_copy / "generator.json") and "not a report generator directory" in error.reason
    assert _load_error(tmp_path / "nowhere").reason == "not found"
    (tmp_path / "file").write_text("x")
    assert "is a file" in _load_error(tmp_path / "file").reason


# ------------------------------------------------------------------------------------------------------------------
# llm/, llm_lora/, tokenizer/
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, name, reason",
    [
        (lambda d: (d / "llm" / "config.json").write_text("garbage {"), "llm/config.json", "not JSON"),
        (lambda d: (d / "llm" / "config.json").write_text("[1, 2]"), "llm/config.json", "JSON list"),
        (lambda d: (d / "llm" / "config.json").write_text('{"hidden_size": 32}'), "llm/config.json", "model_type"),
        (lambda d: (d / "llm" / "config.json").unlink(), "llm/config.json", "missing"),
        (lambda d: (d / "llm" / "model.safetensors").unlink(), "llm/model.safetensors", "missing"),
        (lambda d: _first_half(d / "llm" / "model.safetensors"), "llm/model.safetensors", "truncated"),
        (lambda d: _random_bytes(d / "llm" / "model.safetensors"), "llm/model.safetensors", "not a safetensors"),
        (lambda d: shutil.rmtree(d / "llm"), "llm", "missing"),
        (lambda d: shutil.rmtree(d / "llm_lora"), "llm_lora", "LoRA adapter was saved here"),
        (lambda d: (d / "llm_lora" / "adapter_config.json").write_text("]"), "llm_lora/adapter_config.json", "JSON"),
        (lambda d: (d / "llm_lora" / "adapter_config.json").write_text("{}"), "llm_lora/adapter_config.json",
         "peft_type"),
        (lambda d: _first_half(d / "llm_lora" / "adapter_model.safetensors"), "llm_lora/adapter_model.safetensors",
         "truncated"),
        (lambda d: (d / "llm_lora" / "adapter_model.safetensors").unlink(), "llm_lora/adapter_model.safetensors",
         "missing"),
        (lambda d: shutil.rmtree(d / "tokenizer"), "tokenizer", "missing"),
    ],
)  # fmt: skip
def test_damaged_model_part_is_named(model_copy, damage, name: str, reason: str) -> None:
    damage(model_copy)
    error = _load_error(model_copy)
    assert error.path == str(model_copy / name), error
    assert reason in error.reason, error


def test_llm_weights_missing_a_tensor_are_refused(model_copy) -> None:
    from safetensors.torch import load_file, save_file

    path = model_copy / "llm" / "model.safetensors"
    state = load_file(str(path))
    dropped = next(k for k in state if "layers.0.mlp" in k)
    del state[dropped]
    save_file(state, str(path), metadata={"format": "pt"})
    error = _load_error(model_copy)  # transformers alone would initialise the weight at random, with a warning
    assert error.path == str(model_copy / "llm") and "missing" in error.reason


def test_llm_weights_of_another_shape_are_refused(model_copy) -> None:
    from safetensors.torch import load_file, save_file

    path = model_copy / "llm" / "model.safetensors"
    state = load_file(str(path))
    key = next(k for k in state if "layers.0.mlp" in k)
    state[key] = torch.zeros(3, 3)
    save_file(state, str(path), metadata={"format": "pt"})
    error = _load_error(model_copy)
    assert error.path == str(model_copy / "llm")


def test_adapter_missing_weights_is_refused(model_copy) -> None:
    from safetensors.torch import load_file, save_file

    path = model_copy / "llm_lora" / "adapter_model.safetensors"
    state = load_file(str(path))
    del state[next(iter(state))]
    save_file(state, str(path), metadata={"format": "pt"})
    error = _load_error(model_copy)
    assert error.path == str(path) and "LoRA weights" in error.reason


def test_garbage_tokenizer_is_named(model_copy) -> None:
    for path in (model_copy / "tokenizer").iterdir():
        path.write_text("{ garbage")
    error = _load_error(model_copy)
    assert error.path == str(model_copy / "tokenizer") and "tokenizer" in error.reason


def test_report_inference_load_gives_the_same_error(model_copy) -> None:
    from monai_r2gen.inference import ReportInference

    _first_half(model_copy / "modules.safetensors")
    with pytest.raises(ModelFileError, match="modules.safetensors: is truncated"):
        ReportInference(model_copy, device="cpu").load()


# ------------------------------------------------------------------------------------------------------------------
# saving: permissions and atomic replacement
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def umask() -> Iterator[Callable[[int], None]]:
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda value: os.umask(value)
    os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_saved_files_follow_the_umask(saved_model, tmp_path, umask, mask: int, file_mode: int, dir_mode: int) -> None:
    model = RadiologyReportGenerator.from_pretrained(saved_model)
    umask(mask)
    model.save_pretrained(tmp_path / "m")
    modes = _modes(tmp_path / "m")
    assert {"modules.safetensors", "llm/model.safetensors", "llm_lora/adapter_model.safetensors"} <= set(modes)
    files = {name: mode for name, mode in modes.items() if (tmp_path / "m" / name).is_file()}
    folders = {name: mode for name, mode in modes.items() if (tmp_path / "m" / name).is_dir()}
    assert set(files.values()) == {file_mode}, files
    assert set(folders.values()) == {dir_mode}, folders
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == dir_mode


def _state(model: RadiologyReportGenerator) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_failed_save_leaves_the_earlier_model_whole(saved_model, tmp_path, monkeypatch) -> None:
    target = tmp_path / "m"
    shutil.copytree(saved_model, target)
    (target / "training_summary.json").write_text("{}")
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    model = RadiologyReportGenerator.from_pretrained(saved_model)
    with torch.no_grad():
        model.projector.parameters().__next__().add_(1.0)

    def _crash(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_files, "_save_safetensors", _crash)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(target)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no partial folder left behind
    reloaded = RadiologyReportGenerator.from_pretrained(target)
    original = RadiologyReportGenerator.from_pretrained(saved_model)
    for key, value in _state(original).items():
        torch.testing.assert_close(reloaded.state_dict()[key], value)


def test_resave_keeps_user_files_and_drops_stale_parts(saved_model, tmp_path) -> None:
    target = tmp_path / "m"
    shutil.copytree(saved_model, target)
    (target / "training_summary.json").write_text('{"stages": {}}')
    model = RadiologyReportGenerator.from_pretrained(saved_model)
    model.save_pretrained(target, merge_lora=True)  # merged: no llm_lora/ any more
    assert (target / "training_summary.json").read_text() == '{"stages": {}}'
    assert not (target / "llm_lora").exists() and (target / "llm" / "model.safetensors").is_file()
    assert not RadiologyReportGenerator.from_pretrained(target).has_llm_lora
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_save_into_a_folder_whose_parent_is_read_only(saved_model, tmp_path, monkeypatch) -> None:
    """No sibling folder can be made: the parts are staged inside the model folder and renamed over the old ones."""
    import tempfile

    parent = tmp_path / "shared"
    target = parent / "m"
    shutil.copytree(saved_model, target)
    (target / "notes.txt").write_text("keep")
    mkdtemp = tempfile.mkdtemp

    def _read_only_parent(*args, dir=None, **kwargs):
        if Path(dir) == parent:
            raise PermissionError(13, "Permission denied", str(dir))
        return mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", _read_only_parent)
    model = RadiologyReportGenerator.from_pretrained(saved_model)
    model.save_pretrained(target, merge_lora=True)
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["README.md", "generator.json", "modules.safetensors", "tokenizer", "llm", "notes.txt"]
    )
    assert not RadiologyReportGenerator.from_pretrained(target).has_llm_lora
    assert [p.name for p in parent.iterdir()] == ["m"]


def test_save_onto_a_file_is_refused(saved_model, tmp_path) -> None:
    (tmp_path / "m").write_text("not a folder")
    model = RadiologyReportGenerator.from_pretrained(saved_model)
    with pytest.raises(OutputFileError, match="is a file"):
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m").read_text() == "not a folder"
    with pytest.raises(OutputFileError, match="folder cannot be made"):
        model.save_pretrained(tmp_path / "m" / "sub" / "model")
