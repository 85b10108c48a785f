"""Stage-2 LoRA on tiny local copies of each LLM family: per-family defaults, the bundle's default, typed refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from monai_r2gen.data.reports import TokenizeReportd
from monai_r2gen.data.tokenizer import train_report_tokenizer
from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.factory import TINY_LLM_FAMILIES, tiny_llm_options
from monai_r2gen.networks.generator import RadiologyReportGenerator
from monai_r2gen.networks.llm_loading import (
    default_lora_targets,
    linear_module_names,
    load_causal_lm,
    load_tokenizer,
    resolve_lora_targets,
)
from tests.engines.test_bundle import CONFIGS, TINY_OVERRIDES, _bundle
from tests.networks.conftest import IMAGE_SIZE, make_reports, tiny_config

# the families of docs/training.md (GPT-2, Qwen2.5, OpenLLaMA / Llama 2, Mistral, Phi-3, GPT-NeoX, Falcon) and MPT,
# each with the names its attention projections go by
FAMILY_DEFAULTS = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "mpt": ["Wqkv"],
}
LLAMA_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def reports() -> list[str]:
    return make_reports(30)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, reports) -> Path:
    path = tmp_path_factory.mktemp("lora_tokenizer")
    train_report_tokenizer(reports, vocab_size=300, save_dir=path)
    return path


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """One tiny Hugging Face folder per family (2 layers x 32, the tokenizer's 300-token vocabulary)."""
    root = tmp_path_factory.mktemp("lora_llms")
    tokenizer = load_tokenizer(tokenizer_dir)
    dirs = {}
    for i, family in enumerate(TINY_LLM_FAMILIES):
        torch.manual_seed(i)
        llm = load_causal_lm(options=tiny_llm_options(family, 32, 2, 2, 256), tokenizer=tokenizer)
        llm.save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
        dirs[family] = root / family
    return dirs


def _model(path: Path, **overrides) -> RadiologyReportGenerator:
    return RadiologyReportGenerator.from_config(tiny_config(llm_path=str(path), **overrides))


def _step(model: RadiologyReportGenerator, reports: list[str]) -> None:
    tok = TokenizeReportd("report", tokenizer=model.tokenizer, num_image_tokens=model.num_image_tokens, max_length=96)
    items = [tok({"report": r}) for r in reports[:2]]
    width = max(len(i["input_ids"]) for i in items)
    ids = torch.full((2, width), model.tokenizer.pad_token_id)
    labels = torch.full((2, width), -100)
    attention = torch.zeros((2, width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n], labels[row, :n], attention[row, :n] = item["input_ids"], item["labels"], 1
    model.train()
    model(torch.rand(2, 1, 1, IMAGE_SIZE, IMAGE_SIZE), ids, attention, labels).loss.backward()


def _adapted(model: RadiologyReportGenerator) -> set[str]:
    """Leaf names of the LLM modules that carry a LoRA adapter."""
    names = [name for name, _ in model.llm.named_parameters() if ".lora_A" in name]
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in names}


def test_every_family_in_the_docs_has_a_tiny_preset() -> None:
    assert set(FAMILY_DEFAULTS) == set(TINY_LLM_FAMILIES)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    for name in ("GPT-2", "Qwen2", "Llama", "Mistral", "Phi-3", "GPT-NeoX", "Falcon"):
        assert name in docs


@pytest.mark.parametrize("family", TINY_LLM_FAMILIES)
def test_stage2_default_targets_train_on_every_family(family_dirs, reports, family: str) -> None:
    model = _model(family_dirs[family])
    assert model.llm_config.model_type == family
    summary = apply_stage(model, "stage2")
    assert summary["llm_lora_targets"] == sorted(FAMILY_DEFAULTS[family])
    assert _adapted(model) == set(FAMILY_DEFAULTS[family])
    assert summary["components"]["llm"]["trainable"] > 0
    _step(model, reports)
    grads = [p.grad for n, p in model.llm.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    model.eval()
    assert len(model.generate(torch.rand(1, 1, 1, IMAGE_SIZE, IMAGE_SIZE), max_new_tokens=2)) == 1


@pytest.mark.parametrize("family", TINY_LLM_FAMILIES)
def test_the_bundles_default_targets_fit_every_family(family_dirs, family: str) -> None:
    """train.yaml's stage-2 target_modules (as the workflow hands it to enable_llm_lora) on each family."""
    lora = yaml.safe_load((CONFIGS / "train.yaml").read_text())["stage2"]["lora"]
    model = _model(family_dirs[family])
    model.enable_llm_lora(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                          target_modules=lora["target_modules"])  # fmt: skip
    summary = apply_stage(model, "stage2")
    assert summary["components"]["llm"]["trainable"] > 0
    assert FAMILY_DEFAULTS[family][0] in _adapted(model)
    assert "lm_head" not in _adapted(model)  # "all-linear": every layer but the output head
    # every Linear / Conv1D layer (Mixtral's experts, fused parameters, get peft's parameter adapters on top)
    assert set(linear_module_names(model.base_llm)) - {"lm_head"} <= _adapted(model)


def test_all_linear_on_llama_is_the_list_the_bundle_used_before(family_dirs) -> None:
    """The embedded default (a Llama) gets exactly the adapters, and initial values, of the former explicit list."""
    states = []
    for targets in (LLAMA_NAMES, "all-linear"):
        torch.manual_seed(0)
        model = _model(family_dirs["llama"], llm_lora_target_modules=targets)
        apply_stage(model, "stage2")
        states.append({n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" in n})
    assert states[0].keys() == states[1].keys() and len(states[0]) == 2 * 2 * len(LLAMA_NAMES)
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value)


@pytest.mark.parametrize("family", ["gpt2", "phi3", "mpt"])
def test_lora_adapter_round_trip(family_dirs, tmp_path, family: str) -> None:
    """The adapter saved for a family reloads to the same outputs (MPT's uses peft's plain wrapper)."""
    model = _model(family_dirs[family])
    apply_stage(model, "stage2")
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    images = torch.rand(1, 1, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    ids, attention = model.encode_prompts([model.config.prompt_template])
    model.eval()
    with torch.no_grad():
        expected = model(images, ids, attention).logits
    model.save_pretrained(tmp_path / "m")
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "m").eval()
    assert loaded.has_llm_lora and (tmp_path / "m" / "llm_lora" / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, ids, attention).logits, expected)


@pytest.mark.parametrize("family", ["gpt2", "phi3", "gpt_neox", "falcon", "mpt"])
def test_llama_names_on_another_family_are_refused_with_its_layer_names(family_dirs, family: str) -> None:
    model = _model(family_dirs[family], llm_lora_target_modules=["q_proj", "v_proj"])
    with pytest.raises(ModelConfigError) as info:
        apply_stage(model, "stage2")
    message = str(info.value)
    assert repr(family) in message and FAMILY_DEFAULTS[family][0] in message
    for name in linear_module_names(model.base_llm):
        assert name in message
    assert not model.has_llm_lora  # nothing half-attached


def test_regex_and_partial_lists(family_dirs, caplog) -> None:
    llm = load_causal_lm(family_dirs["gpt2"])
    assert resolve_lora_targets(llm, r".*\.c_attn") == r".*\.c_attn"
    with pytest.raises(ModelConfigError, match="'gpt2'.*c_attn"):
        resolve_lora_targets(llm, r".*\.q_proj")
    with pytest.raises(ModelConfigError, match="regular expression"):
        resolve_lora_targets(llm, "(")
    with pytest.raises(ModelConfigError, match="module names"):
        resolve_lora_targets(llm, [])
    with caplog.at_level(logging.WARNING, logger="monai_r2gen.networks.llm_loading"):
        assert resolve_lora_targets(llm, ["c_attn", "q_proj"]) == ["c_attn", "q_proj"]
    assert any("['q_proj']" in r.getMessage() and "'gpt2'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", [None, "auto", "None", "null", "default"])
def test_none_and_auto_restore_the_family_defaults(family_dirs, value) -> None:
    llm = load_causal_lm(family_dirs["phi3"])
    assert resolve_lora_targets(llm, value) == default_lora_targets(llm) == ["qkv_proj"]


def test_unknown_family_without_known_names_is_refused_with_its_layers() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mix = torch.nn.Linear(2, 2)

    with pytest.raises(ModelConfigError, match=r"'Odd'.*\['mix'\]"):
        default_lora_targets(Odd())


def _gpt2_bundle_config(tmp_path: Path) -> Path:
    """TINY_OVERRIDES without the tiny Llama (the LLM comes from --llm_path), train.yaml's stage-2 LoRA targets."""
    tiny = {key: value for key, value in TINY_OVERRIDES.items() if key != "network_config"}
    tiny["network_config"] = {key: value for key, value in TINY_OVERRIDES["network_config"].items()
                              if key not in ("llm_options", "tokenizer_vocab_size")}  # fmt: skip
    tiny["network_config"]["llm_path"] = "@llm_path"  # a merged file replaces train.yaml's network_config whole
    for stage in ("stage0", "stage1", "stage2"):
        tiny[stage] = {**tiny[stage], "max_iterations": 2, "validate": False}
    bundle_lora = yaml.safe_load((CONFIGS / "train.yaml").read_text())["stage2"]["lora"]
    tiny["stage2"]["lora"] = {**bundle_lora, "r": 4, "alpha": 8}  # train.yaml's target_modules, smaller rank
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, layers",
    [
        ([], {"c_attn", "c_proj", "c_fc"}),  # train.yaml's "all-linear": every GPT-2 layer but the head
        (["--stage2#lora#target_modules", "None"], {"c_attn", "c_proj", "c_fc"}),  # MONAI drops None: the default
        (["--stage2#lora#target_modules", "auto"], {"c_attn"}),  # the family's attention projection
    ],
)
def test_bundle_trains_a_tiny_local_gpt2(family_dirs, tmp_path, override: list[str], layers: set[str]) -> None:
    """docs/training.md with a local GPT-2 folder as --llm_path: every stage runs and stage 2 puts LoRA on GPT-2's
    own layers."""
    config = _gpt2_bundle_config(tmp_path)
    _bundle("training", [CONFIGS / "train.yaml", config], tmp_path, "--device", "cpu",
            "--llm_path", str(family_dirs["gpt2"]), *override)  # fmt: skip
    model_dir = tmp_path / "models" / "report_generator"
    adapter = json.loads((model_dir / "llm_lora" / "adapter_config.json").read_text())
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == layers
    summary = json.loads((model_dir / "training_summary.json").read_text())
    assert "stage2" in summary["stages"]
    model = RadiologyReportGenerator.from_pretrained(model_dir)
    assert model.llm_config.model_type == "gpt2" and model.has_llm_lora


@pytest.mark.slow
def test_bundle_refuses_llama_names_on_gpt2_naming_its_layers(family_dirs, tmp_path) -> None:
    import subprocess
    import sys

    from tests.engines.test_bundle import _env

    config = _gpt2_bundle_config(tmp_path)
    files = f"['{CONFIGS / 'train.yaml'}','{config}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files, "--meta_file",
           str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"), "--bundle_root",
           str(tmp_path), "--device", "cpu", "--llm_path", str(family_dirs["gpt2"]),
           "--stage2#lora#target_modules", "['q_proj','k_proj','v_proj','o_proj']"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert "ModelConfigError" in proc.stderr and "match no module of the 'gpt2' LLM" in proc.stderr
    assert "['c_attn', 'c_fc', 'c_proj', 'lm_head']" in proc.stderr
