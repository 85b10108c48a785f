"""A saved model directory's files: what it holds, atomic saving (the whole directory written beside the target and
swapped in), and checked loading (safetensors only, every part verified first; a bad file is a typed error naming
it).

A directory written by ``RadiologyReportGenerator.save_pretrained`` holds only what a user cannot get elsewhere:

- ``generator.json``: the :class:`~monai_r2gen.networks.generator_config.GeneratorConfig`, the base encoder and LLM
  it expects (path and fingerprint) and what the directory holds;
- ``tokenizer/``: the tokenizer (with its image token);
- ``modules.safetensors``: view fusion, projector and the optional finding head and finding prompts, plus the encoder
  when it is not a Hugging Face model and was trained or built from scratch;
- ``encoder/`` and ``llm/``: full Hugging Face model directories, written only when the base was built from a config
  (random init, e.g. the embedded tiny default) or was trained in full (stage 0 trains the whole LLM);
- ``encoder_lora/`` and ``llm_lora/``: LoRA adapters in peft's own format (``PeftModel.from_pretrained`` loads them).

A directory without ``llm/`` needs its base LLM: ``RadiologyReportGenerator.from_pretrained`` looks at the recorded
path (or the one given) and refuses a base whose fingerprint differs with
:class:`~monai_r2gen.errors.CheckpointMismatchError`.

Saving writes the whole directory beside the target and swaps it in by renaming, so a failed or killed save leaves
the earlier model whole; files get the permissions the umask allows. Loading reads safetensors only (a pickle is
refused, never unpickled) and checks every part first: a missing, truncated, corrupt or wrong kind of file is a
:class:`~monai_r2gen.errors.ModelFileError` naming that file and the reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_r2gen.data.tokenizer import add_image_token
from monai_r2gen.errors import CheckpointMismatchError, ModelConfigError, ModelFileError
from monai_r2gen.files import OutputFileError, apply_umask
from monai_r2gen.networks.encoders import HFVisionEncoder, build_encoder
from monai_r2gen.networks.fingerprints import fingerprint
from monai_r2gen.networks.generator_config import GeneratorConfig, _parse_dtype
from monai_r2gen.networks.generator_parts import EXTRA_MODULES, build_fusion_and_projector, build_vision_encoder
from monai_r2gen.networks.llm_loading import _is_peft, _resize_embeddings, load_causal_lm, load_tokenizer
from monai_r2gen.networks.model_card import CARD_NAME, build_model_card, card_may_be_written, model_card_facts

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODULES_NAME",
    "load_model",
    "save_model",
    "trained_in_full",
    "write_model_files",
]

logger = logging.getLogger(__name__)


FORMAT_VERSION = 1
CONFIG_NAME = "generator.json"
MODULES_NAME = "modules.safetensors"


def _clean_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of a module with peft LoRA layers removed (``base_layer`` weights under their original names)."""
    state = {}
    for key, value in module.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))


def _base_record(path: str | os.PathLike | None) -> dict[str, Any]:
    if path is None:
        return {"source": "config", "path": None, "fingerprint": None}
    return {"source": "path", "path": os.path.abspath(os.fspath(path)), "fingerprint": fingerprint(path)}


def _resolve_base(root: Path, part: str, given: str | os.PathLike | None, record: dict[str, Any]) -> str:
    """The base path to load and verify against the recorded fingerprint."""
    path = os.fspath(given) if given is not None else record.get("path")
    if path is None:
        raise ModelConfigError(f"{root}: holds no {part} weights and names no base {part}; pass {part}_path=")
    if not os.path.exists(path):
        raise ModelConfigError(f"{root}: base {part} {path} not found; pass {part}_path= to the base it was trained on")
    expected = record.get("fingerprint")
    found = fingerprint(path)
    if expected is not None and found != expected:
        raise CheckpointMismatchError(
            f"{root}: this checkpoint was trained on the base {part} {record.get('path')} ({expected[:19]}...), "
            f"but {path} is a different model ({found[:19]}...); pass {part}_path= to the original base"
        )
    return path


def _load_prefixed(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, source: Path) -> None:
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"{source}: weights under {prefix!r} do not fit the model ({exc})") from exc


@contextlib.contextmanager
def _merged(module: nn.Module, active: bool) -> Iterator[None]:
    """Merge a peft model's LoRA weights into its base weights for the block (``active``), unmerge after."""
    if not active:
        yield
        return
    module.merge_adapter()
    try:
        yield
    finally:
        module.unmerge_adapter()


# what save_pretrained writes; anything else in a model directory (training summaries, logs) is the user's and kept
_MODEL_ENTRIES = (CONFIG_NAME, MODULES_NAME, "tokenizer", "encoder", "llm", "encoder_lora", "llm_lora")
_ENCODER_CONTENTS = ("base", "hf_dir", "modules")
_LLM_CONTENTS = ("base", "hf_dir")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header


def _apply_umask_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            apply_umask(path)


@contextlib.contextmanager
def _staged_model_dir(out: Path) -> Iterator[Path]:
    """An empty hidden folder to write a model into; on success it replaces ``out``, on any error it is removed.

    The folder is a sibling of ``out``, swapped in with two renames: the earlier model stays whole until the new one
    is complete. Entries of the earlier ``out`` that are not model parts (:data:`_MODEL_ENTRIES`) move into the new
    one. When the parent folder cannot be written, the folder is made inside ``out`` and each part replaces its old
    one by a rename, ``generator.json`` last (removed first), so a directory is never half old and half new.
    """
    if out.is_symlink():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise OutputFileError(out, "is a file; a model is saved into a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file where a folder of the path should be
        raise OutputFileError(out, f"its folder cannot be made ({exc.strerror or exc})") from exc
    inside = False
    try:  # a unique name (not only the pid): two threads saving the same model must not share a folder
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError:  # e.g. a read-only parent: stage inside the model directory
        out.mkdir(exist_ok=True)
        stage, inside = Path(tempfile.mkdtemp(prefix=".", suffix=".partial", dir=out)), True
    old = stage.with_name(stage.name.removesuffix(".partial") + ".old")
    try:
        yield stage
        _apply_umask_tree(stage)
        apply_umask(stage, 0o777)  # mkdtemp makes it 0700
        if inside:
            _swap_entries(stage, out, old)
        elif out.is_dir():
            with contextlib.suppress(OSError):
                shutil.copymode(out, stage)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            try:
                os.replace(stage, out)
            except BaseException:
                os.replace(old, out)
                raise
            kept = []  # the user's files beside the earlier model (training summary, logs) move to the new one
            for entry in old.iterdir():  # not those the new save wrote again (its model card)
                if entry.name not in _MODEL_ENTRIES and not os.path.lexists(out / entry.name):
                    try:
                        os.replace(entry, out / entry.name)
                    except OSError as exc:
                        kept.append(f"{entry.name} ({exc.strerror or exc})")
            if kept:
                logger.warning("saved the model to %s; could not move %s from the earlier model, left in %s", out,
                               ", ".join(kept), old)  # fmt: skip
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _swap_entries(stage: Path, out: Path, old: Path) -> None:
    """Move the model parts written in ``stage`` (inside ``out``) over those of ``out``, ``generator.json`` last."""
    old.mkdir(exist_ok=True)
    for name in (CONFIG_NAME, *(n for n in _MODEL_ENTRIES if n != CONFIG_NAME)):
        if (out / name).exists() or (out / name).is_symlink():
            os.replace(out / name, old / name)
    for name in (*(n for n in _MODEL_ENTRIES if n != CONFIG_NAME), CARD_NAME, CONFIG_NAME):
        if (stage / name).exists():
            os.replace(stage / name, out / name)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def _read_model_meta(root: Path) -> dict[str, Any]:
    """``generator.json``, checked: a JSON object of the supported format with a config and a contents record.

    Raises:
        ModelFileError: naming the directory or ``generator.json`` and the reason.
    """
    meta_path = root / CONFIG_NAME
    if not root.is_dir():
        raise ModelFileError(root, "not found" if not root.exists() else "is a file, not a report generator directory")
    if not meta_path.is_file():
        raise ModelFileError(meta_path, f"missing: {root} is not a report generator directory (no {CONFIG_NAME})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFileError(meta_path, f"cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(meta_path, f"is not JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(meta_path, f"holds a JSON {type(meta).__name__} where the model record (an object) is "
                                        "expected")  # fmt: skip
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(meta_path, f"unsupported format version {meta.get('format_version')!r} (this version "
                                        f"reads {FORMAT_VERSION})")  # fmt: skip
    missing = [key for key in ("config", "contents") if key not in meta]
    if missing:
        raise ModelFileError(meta_path, f"lacks the key(s) {missing}")
    contents = meta["contents"]
    if not isinstance(meta["config"], dict):
        raise ModelFileError(meta_path, "its 'config' is not an object")
    if (
        not isinstance(contents, dict)
        or contents.get("encoder") not in _ENCODER_CONTENTS
        or contents.get("llm") not in _LLM_CONTENTS
        or not all(isinstance(contents.get(k, False), bool) for k in ("encoder_lora", "llm_lora"))
    ):
        raise ModelFileError(meta_path, f"its 'contents' record is malformed ({contents!r}): 'encoder' one of "
                                        f"{_ENCODER_CONTENTS}, 'llm' one of {_LLM_CONTENTS}, 'encoder_lora' / "
                                        "'llm_lora' true or false")  # fmt: skip
    checks = (
        ("bases", dict, {}),
        ("trained", list, []),
        ("num_image_tokens", int, 0),
    )
    for key, kind, default in checks:
        if not isinstance(meta.get(key, default), kind) or isinstance(meta.get(key, default), bool):
            raise ModelFileError(meta_path, f"its {key!r} is not a JSON {kind.__name__}")
    return meta


def _check_safetensors(path: Path) -> list[str]:
    """Check that ``path`` is a complete safetensors file without reading its tensors; returns the tensor names.

    Raises:
        ModelFileError: missing, empty, truncated, corrupt or a pickle (the reason says which).
    """
    if not path.is_file():
        pickles = [p.name for p in path.parent.glob(path.stem + ".*") if p.suffix in _PICKLE_SUFFIXES]
        if pickles:
            raise ModelFileError(path, f"missing; the folder holds pickled weights ({', '.join(pickles)}), which are "
                                       "never loaded (a pickle can run code): save them as safetensors")  # fmt: skip
        raise ModelFileError(path, "missing" if not path.exists() else "is not a file")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            declared = int.from_bytes(head, "little") if len(head) == 8 else -1
            raw = handle.read(declared) if 0 < declared <= min(size - 8, _MAX_HEADER_BYTES) else b""
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise ModelFileError(path, "is empty (0 bytes)")
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and not raw):
        raise ModelFileError(path, "is a PyTorch pickle (torch.save), not safetensors; pickled weights are never "
                                   "loaded (a pickle can run code)")  # fmt: skip
    if not raw:
        raise ModelFileError(path, f"is not a safetensors file, or is truncated: its first 8 bytes declare a header "
                                   f"of {declared} bytes, the file has {size}")  # fmt: skip
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"is not a safetensors file, or is corrupt: its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelFileError(path, "is not a safetensors file: its header is not a JSON object")
    end, names = 0, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelFileError(path, f"is corrupt: the header entry of tensor {name!r} has no data offsets")
        end = max(end, offsets[1])
        names.append(name)
    expected = 8 + declared + end
    if size < expected:
        raise ModelFileError(path, f"is truncated: {size} of its {expected} bytes")
    return names


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checked safetensors file (never a pickle)."""
    from safetensors.torch import load_file

    _check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own error types (SafetensorError, OSError ...)
        raise ModelFileError(path, f"cannot be read as safetensors ({exc})") from exc


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(path, f"missing: the {what} has no {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelFileError(path, f"holds a JSON {type(data).__name__} where an object is expected")
    return data


def _check_hf_dir(folder: Path, what: str) -> None:
    """A Hugging Face model folder of a model directory: a ``config.json`` with a model type and safetensors weights.

    Raises:
        ModelFileError: naming the folder or the file and the reason.
    """
    if not folder.is_dir():
        raise ModelFileError(folder, f"missing: {CONFIG_NAME} says the {what} was saved here")
    config = _read_json_object(folder / "config.json", what)
    if not config.get("model_type"):
        raise ModelFileError(folder / "config.json", "has no 'model_type'")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json_object(index, what).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(index, "has no 'weight_map'")
        for shard in sorted(set(map(str, weight_map.values()))):
            _check_safetensors(folder / shard)
    else:
        _check_safetensors(folder / "model.safetensors")


def _check_adapter_dir(folder: Path, what: str) -> list[str]:
    """A peft LoRA folder: ``adapter_config.json`` and a safetensors ``adapter_model``; returns its tensor names."""
    if not folder.is_dir():
        raise ModelFileError(folder, f"missing: {CONFIG_NAME} says the {what}'s LoRA adapter was saved here")
    config = _read_json_object(folder / "adapter_config.json", f"{what} LoRA adapter")
    if not config.get("peft_type"):
        raise ModelFileError(folder / "adapter_config.json", "has no 'peft_type' (not a peft adapter config)")
    return _check_safetensors(folder / "adapter_model.safetensors")


def _check_model_files(root: Path, contents: dict[str, Any]) -> None:
    """Every part ``contents`` names is present and well-formed (cheap: headers only), before anything loads."""
    if not (root / "tokenizer").is_dir():
        raise ModelFileError(root / "tokenizer", "missing: the model's tokenizer folder")
    _check_safetensors(root / MODULES_NAME)
    if contents["encoder"] == "hf_dir":
        _check_hf_dir(root / "encoder", "vision encoder")
    if contents["llm"] == "hf_dir":
        _check_hf_dir(root / "llm", "LLM")
    if contents.get("encoder_lora"):
        _check_adapter_dir(root / "encoder_lora", "encoder")
    if contents.get("llm_lora"):
        _check_adapter_dir(root / "llm_lora", "LLM")


def _load_part(folder: Path, what: str, load: Any) -> Any:
    """``load()``, with any failure but one of our own typed errors raised as a ModelFileError naming ``folder``."""
    from monai_r2gen.errors import R2GenError

    try:
        return load()
    except R2GenError as exc:
        if not isinstance(exc, ModelConfigError):
            raise
        raise ModelFileError(folder, f"cannot be loaded as the {what} ({exc})") from exc
    except Exception as exc:  # the loaders' own errors (OSError, ValueError, tokenizers' bare Exception ...)
        raise ModelFileError(folder, f"cannot be loaded as the {what} ({type(exc).__name__}: {exc})") from exc


def _load_saved_llm(folder: Path, trust_remote_code: bool, dtype: torch.dtype | None) -> nn.Module:
    """The ``llm/`` folder of a model directory: safetensors only, and every weight of the model present."""
    from transformers import AutoModelForCausalLM

    def _load() -> tuple[nn.Module, dict[str, Any]]:
        return AutoModelForCausalLM.from_pretrained(
            os.fspath(folder), local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype,
            use_safetensors=True, output_loading_info=True,
        )  # fmt: skip

    llm, info = _load_part(folder, "LLM", _load)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        problems = ([f"{len(missing)} missing (e.g. {missing[:3]})"] if missing else []) + (
            [f"{len(mismatched)} of another shape"] if mismatched else [])  # fmt: skip
        raise ModelFileError(folder, f"its weights do not make the model its config.json describes: "
                                     f"{', '.join(problems)}")  # fmt: skip
    return llm


def _load_adapter(model: nn.Module, folder: Path, what: str) -> nn.Module:
    """A peft LoRA folder of a model directory on ``model``; every adapter weight the model gets must be in the file."""
    from peft import PeftModel

    saved = _check_adapter_dir(folder, what)
    wrapped = _load_part(folder, f"{what}'s LoRA adapter", lambda: PeftModel.from_pretrained(model, str(folder)))
    expected = sum(1 for name, _ in wrapped.named_parameters() if "lora_" in name)
    if len(saved) < expected:
        raise ModelFileError(folder / "adapter_model.safetensors", f"holds {len(saved)} of the {expected} LoRA weights "
                                                                   "its adapter_config.json asks for")  # fmt: skip
    return wrapped


# ----------------------------------------------------------------------------------------------------------------
# saving and loading a whole generator
# ----------------------------------------------------------------------------------------------------------------


def trained_in_full(model: Any, part: str) -> bool:
    """Whether ``model``'s ``part`` (``"encoder"`` or ``"llm"``) is saved as full weights rather than as a reference.

    True when a stage trained it in full (``model.trained``), when it was built from a config (random init) or when
    any of its base (non-LoRA) weights still requires grad.
    """
    if part in model.trained or model.bases.get(part, {}).get("source") != "path":
        return True
    module = model.encoder if part == "encoder" else model.llm
    return any(p.requires_grad for n, p in module.named_parameters() if "lora_" not in n)


def save_model(model: Any, save_dir: str | os.PathLike, merge_lora: bool = False) -> None:
    """Write ``model`` (a ``RadiologyReportGenerator``) to ``save_dir`` (its ``save_pretrained``)."""
    out = Path(save_dir)
    card = card_may_be_written(out)  # False: the user's own README.md, moved into the new folder as it is
    with _staged_model_dir(out) as stage:
        contents = write_model_files(model, stage, merge_lora)
        if card:
            facts = model_card_facts(stage, extras_dir=out)
            (stage / CARD_NAME).write_text(build_model_card(facts), encoding="utf-8")
    logger.info("saved the report generator to %s (%s)", out, contents)


def write_model_files(model: Any, out: Path, merge_lora: bool) -> dict[str, Any]:
    """Write every part of ``model``'s directory into ``out`` (an empty folder); returns the contents record."""
    contents: dict[str, Any] = {"encoder": "base", "llm": "base", "encoder_lora": False, "llm_lora": False}
    modules: dict[str, torch.Tensor] = {}
    for name in ("fusion", "projector", *EXTRA_MODULES):
        module = getattr(model, name)
        if module is not None:
            modules.update({f"{name}.{k}": v for k, v in module.state_dict().items()})

    # encoder
    attr = model.encoder_backbone_name
    backbone = getattr(model.encoder, attr)
    enc_lora = _is_peft(backbone)
    full_encoder = trained_in_full(model, "encoder") or (enc_lora and merge_lora)
    with _merged(backbone, enc_lora and merge_lora):
        if full_encoder and isinstance(model.encoder, HFVisionEncoder):
            base = backbone.get_base_model() if enc_lora else backbone
            base.save_pretrained(out / "encoder", state_dict=_clean_state_dict(base))
            contents["encoder"] = "hf_dir"
        elif full_encoder:
            clean = _clean_state_dict(backbone.get_base_model() if enc_lora else backbone)
            modules.update({f"encoder.{attr}.{k}": v for k, v in clean.items()})
            contents["encoder"] = "modules"
    if enc_lora and not merge_lora:
        backbone.save_pretrained(str(out / "encoder_lora"), save_embedding_layers=False)
        contents["encoder_lora"] = True

    # language model
    llm_lora = model.has_llm_lora
    with _merged(model.llm, llm_lora and merge_lora):
        if trained_in_full(model, "llm") or (llm_lora and merge_lora):
            base = model.base_llm
            base.save_pretrained(out / "llm", state_dict=_clean_state_dict(base))
            model.tokenizer.save_pretrained(out / "llm")
            contents["llm"] = "hf_dir"
    if llm_lora and not merge_lora:
        model.llm.save_pretrained(str(out / "llm_lora"), save_embedding_layers=False)
        contents["llm_lora"] = True

    _save_safetensors(modules, out / MODULES_NAME)
    model.tokenizer.save_pretrained(out / "tokenizer")
    meta = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "bases": model.bases,
        "contents": contents,
        "trained": sorted(model.trained),
        "num_image_tokens": model.num_image_tokens,
        "vocab_size": len(model.tokenizer),
    }
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return contents


def load_model(
    cls: type,
    model_dir: str | os.PathLike,
    encoder_path: str | os.PathLike | None = None,
    llm_path: str | os.PathLike | None = None,
    trust_remote_code: bool | None = None,
    dtype: str | None = None,
) -> Any:
    """Rebuild a ``cls`` (``RadiologyReportGenerator``) from ``model_dir``; see its ``from_pretrained``."""
    root = Path(model_dir)
    meta = _read_model_meta(root)
    meta_path = root / CONFIG_NAME
    try:
        config = GeneratorConfig.from_dict(meta["config"])
    except (ModelConfigError, TypeError, ValueError) as exc:
        raise ModelFileError(meta_path, f"its 'config' is not a valid generator config ({exc})") from exc
    if trust_remote_code is not None:
        config.trust_remote_code = trust_remote_code
    if dtype is not None:
        config.dtype = dtype
    contents, bases = meta["contents"], meta.get("bases", {})
    _check_model_files(root, contents)  # every saved part is there and well-formed before anything loads
    tokenizer = _load_part(
        root / "tokenizer", "tokenizer", lambda: load_tokenizer(root / "tokenizer", config.trust_remote_code)
    )
    torch_dtype = _parse_dtype(config.dtype)

    # encoder
    if contents["encoder"] == "hf_dir":
        encoder = _load_part(root / "encoder", "vision encoder", lambda: build_encoder(
            "hf", root / "encoder", image_size=config.image_size, feature=config.encoder_feature,
            mean=config.image_mean, std=config.image_std, normalize=config.normalize_images,
            trust_remote_code=config.trust_remote_code, dtype=torch_dtype,
        ))  # fmt: skip
    elif contents["encoder"] == "modules":
        encoder = build_vision_encoder(config, None, torch_dtype)
    else:
        path = _resolve_base(root, "encoder", encoder_path, bases.get("encoder", {}))
        encoder = build_vision_encoder(config, path, torch_dtype)

    # language model
    if contents["llm"] == "hf_dir":
        llm = _load_saved_llm(root / "llm", config.trust_remote_code, torch_dtype)
    else:
        path = _resolve_base(root, "llm", llm_path, bases.get("llm", {}))
        llm = load_causal_lm(path, trust_remote_code=config.trust_remote_code, dtype=torch_dtype)
    add_image_token(tokenizer, config.image_token)
    _resize_embeddings(llm, len(tokenizer))

    fusion, projector = build_fusion_and_projector(config, encoder, llm)
    modules = _read_safetensors(root / MODULES_NAME)
    for name, module in (("fusion", fusion), ("projector", projector)):
        _load_prefixed(module, modules, f"{name}.", root / MODULES_NAME)
    if contents["encoder"] == "modules":
        _load_prefixed(encoder, modules, "encoder.", root / MODULES_NAME)

    model = cls(config, encoder, fusion, projector, llm, tokenizer, bases)
    for name in EXTRA_MODULES:
        if getattr(model, name) is not None:
            _load_prefixed(getattr(model, name), modules, f"{name}.", root / MODULES_NAME)
    model.trained = set(meta.get("trained", []))
    if model.num_image_tokens != meta.get("num_image_tokens", model.num_image_tokens):
        raise CheckpointMismatchError(f"{root}: the rebuilt model gives {model.num_image_tokens} visual prompts, "
                                      f"the checkpoint was trained with {meta['num_image_tokens']}")  # fmt: skip
    if contents.get("encoder_lora"):
        attr = model.encoder_backbone_name
        setattr(encoder, attr, _load_adapter(getattr(encoder, attr), root / "encoder_lora", "encoder"))
    if contents.get("llm_lora"):
        model.llm = _load_adapter(model.llm, root / "llm_lora", "LLM")
    model.requires_grad_(False)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    logger.info("loaded the report generator from %s (%s)", root, contents)
    return model
