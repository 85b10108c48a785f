"""RadiologyReportGenerator: prompt splicing, loss masking, generation, LoRA, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from monai_r2gen.data.reports import IGNORE_INDEX
from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import CheckpointMismatchError, ModelConfigError, ModelFileError
from monai_r2gen.networks.factory import build_generator, embedded_default_config
from monai_r2gen.networks.fingerprints import fingerprint
from monai_r2gen.networks.generator import RadiologyReportGenerator
from monai_r2gen.networks.generator_config import GeneratorConfig
from monai_r2gen.networks.host_syncs import HostSyncCounter
from monai_r2gen.networks.llm_loading import load_causal_lm, load_tokenizer

from .conftest import ENCODER_FAMILIES, IMAGE_SIZE, LLM_FAMILIES, tiny_config
from .conftest import collate_reports as _batch


def _perturb(module, pattern, seed=0):
    """Give parameters whose name contains ``pattern`` random values (LoRA B starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if pattern in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch["image"], batch["input_ids"], batch["attention_mask"], view_mask=batch["view_mask"]).logits


# ------------------------------------------------------------------------------------------------------------------
# splicing and loss
# ------------------------------------------------------------------------------------------------------------------


def test_labels_mask_prompt_image_and_padding(make_model, reports):
    model = make_model()
    batch, prompt_len = _batch(model, reports[:3], views=[1, 2, 2], max_length=200)
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    expected = ids.clone()
    expected[:, :prompt_len] = IGNORE_INDEX
    expected[attention == 0] = IGNORE_INDEX
    assert torch.equal(labels, expected)
    assert int((ids == model.image_token_id).sum()) == 3 * model.num_image_tokens
    assert bool((labels[ids == model.image_token_id] == IGNORE_INDEX).all())

    out = model(batch["image"], ids, attention, labels, batch["view_mask"])
    manual = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, manual)
    # the targets are exactly the report tokens and EOS of each study
    n_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    lengths = [len(model.tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in reports[:3]]
    assert n_targets == sum(lengths)


def test_visual_prompts_are_written_at_image_positions(make_model, reports):
    model = make_model().eval()
    batch, _ = _batch(model, reports[:2], views=[2, 1])
    ids = batch["input_ids"]
    with torch.no_grad():
        embeds, _ = model.prepare_inputs_embeds(ids, batch["attention_mask"], batch["image"], batch["view_mask"])
        prompts, _ = model.encode_images(batch["image"], batch["view_mask"])
        text = model.llm.get_input_embeddings()(ids)
    positions = ids == model.image_token_id
    torch.testing.assert_close(embeds[positions], prompts.reshape(-1, prompts.shape[-1]))
    torch.testing.assert_close(embeds[~positions], text[~positions])


@pytest.mark.parametrize("views", [1, 2, 3, 4])
@pytest.mark.parametrize(("fusion", "projector", "queries"), [("mean", "resampler", 3), ("concat", "linear", 0)])
def test_shapes_for_views_and_prompts(make_model, reports, views, fusion, projector, queries):
    model = make_model(max_views=4, view_fusion=fusion, projector=projector, num_queries=max(queries, 1))
    k = queries if projector == "resampler" else 4 * 16  # concat: 4 view slots x 4x4 tokens
    assert model.num_image_tokens == k
    batch, _ = _batch(model, reports[:2], views=[views, 1], max_length=160)
    assert batch["image"].shape == (2, views, 1, IMAGE_SIZE, IMAGE_SIZE)
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(model.tokenizer))
    assert torch.isfinite(out.loss)
    _, attention = model.prepare_inputs_embeds(batch["input_ids"], batch["attention_mask"], batch["image"],
                                               batch["view_mask"])  # fmt: skip
    hidden = int((attention[1] == 0).sum() - (batch["attention_mask"][1] == 0).sum())
    # concat + token-wise projector: the prompts of study 1's three missing view slots are hidden from attention
    assert hidden == (3 * 16 if fusion == "concat" else 0)


@pytest.mark.parametrize("fusion", ["mean", "concat"])
def test_padded_views_do_not_change_the_loss(make_model, reports, fusion):
    model = make_model(view_fusion=fusion, projector="linear" if fusion == "concat" else "resampler").eval()
    batch, _ = _batch(model, reports[:2], views=[2, 1])
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"])
    loss = model(batch["image"], *args).loss
    noisy = batch["image"].clone()
    noisy[1, 1] = torch.rand_like(noisy[1, 1])  # content in the padded view slot
    torch.testing.assert_close(model(noisy, *args).loss, loss)


def test_wrong_number_of_image_tokens_is_refused(make_model, reports):
    model = make_model()
    batch, _ = _batch(model, reports[:1], views=[1])
    ids = batch["input_ids"].clone()
    first = int((ids[0] == model.image_token_id).nonzero()[0])
    ids[0, first] = model.tokenizer.eos_token_id
    with pytest.raises(ModelConfigError, match="image tokens"):
        model(batch["image"], ids, batch["attention_mask"])


def test_labels_on_image_positions_are_ignored(make_model, reports):
    model = make_model()
    batch, _ = _batch(model, reports[:2], views=[1, 2])
    model.eval()
    args = (batch["image"], batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        clean = model(*args, batch["labels"], view_mask=batch["view_mask"]).loss
        labels = batch["labels"].clone()
        image = batch["input_ids"] == model.image_token_id
        labels[image] = batch["input_ids"][image]  # the placeholder ids as targets: a collate's mistake
        dirty = model(*args, labels, view_mask=batch["view_mask"]).loss
    torch.testing.assert_close(dirty, clean)
    assert bool((labels[image] != IGNORE_INDEX).all())  # the caller's tensor is not written


@pytest.mark.parametrize("projector,fusion", [("resampler", "mean"), ("linear", "concat"), ("mlp", "concat")])
def test_no_host_read_before_the_llm_off_the_cpu(make_model, reports, projector, fusion):
    """On CPU tensors the checks read values (free there); on any other device the visual path reads none: the
    meta device, where every host read raises, stands in for a GPU."""
    model = make_model(projector=projector, view_fusion=fusion, finding_head=True, finding_prompts=True)
    batch, _ = _batch(model, reports[:3], views=[1, 2, 1])
    model.eval()
    with HostSyncCounter() as syncs:
        model.prepare_inputs_embeds(batch["input_ids"], batch["attention_mask"], images=batch["image"],
                                    view_mask=batch["view_mask"])  # fmt: skip
    assert syncs.count > 0  # the counter sees the CPU checks
    on_meta = {k: v.to("meta") for k, v in batch.items() if torch.is_tensor(v)}
    model.to("meta")
    embeds, mask = model.prepare_inputs_embeds(on_meta["input_ids"], on_meta["attention_mask"],
                                               images=on_meta["image"], view_mask=on_meta["view_mask"])  # fmt: skip
    assert embeds.shape == (*batch["input_ids"].shape, model.llm_config.hidden_size) and mask.shape == embeds.shape[:2]
    model.train()  # BatchNorm in training picks the real views (it must not see the padding): the one host read
    with pytest.raises(RuntimeError, match="meta"):
        model.encode_views(on_meta["image"], on_meta["view_mask"])


def test_accelerator_paths_give_the_cpu_results_without_host_reads(make_model, reports):
    """The accelerator paths (encode every view and zero the padded ones, mask without testing) give the CPU paths'
    prompts and loss; in eval they read no value before the LLM, in training BatchNorm's pick of the real views does."""
    model = make_model(projector="linear", view_fusion="concat")
    batch, _ = _batch(model, reports[:3], views=[1, 2, 1])
    model.eval()
    with torch.no_grad():
        args = (batch["input_ids"], batch["attention_mask"])
        cpu_embeds, cpu_mask = model.prepare_inputs_embeds(*args, images=batch["image"], view_mask=batch["view_mask"])
        with HostSyncCounter(accelerator_paths=True) as syncs:
            embeds, mask = model.prepare_inputs_embeds(*args, images=batch["image"], view_mask=batch["view_mask"])
    assert syncs.count == 0, syncs.events
    torch.testing.assert_close(embeds, cpu_embeds)
    assert torch.equal(mask, cpu_mask) and not bool(mask.all())  # padded views' prompts hidden both ways
    model.train()
    with HostSyncCounter(accelerator_paths=True) as syncs:
        model.encode_views(batch["image"], batch["view_mask"])
    assert syncs.events == ["_local_scalar_dense", "_local_scalar_dense", "index", "index_put_"]


def test_text_only_forward_hides_image_positions(make_model, reports):
    model = make_model()
    batch, _ = _batch(model, reports[:2], views=[1, 1])
    out = model(None, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.projector.parameters())
    _, attention = model.prepare_inputs_embeds(batch["input_ids"], batch["attention_mask"])
    assert bool((attention[batch["input_ids"] == model.image_token_id] == 0).all())


def test_precomputed_visual_tokens_match_images(make_model, reports):
    model = make_model().eval()
    batch, _ = _batch(model, reports[:2], views=[2, 1])
    with torch.no_grad():
        tokens = model.encoder(batch["image"], batch["view_mask"])
        a = model(batch["image"], batch["input_ids"], batch["attention_mask"], view_mask=batch["view_mask"]).logits
        b = model(None, batch["input_ids"], batch["attention_mask"], view_mask=batch["view_mask"],
                  visual_tokens=tokens).logits  # fmt: skip
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------------------------------


def test_batched_generation_equals_one_by_one(make_model):
    model = make_model()
    _perturb(model.projector, "out_norm.weight")  # livelier prompts: outputs differ between studies
    images = torch.rand(3, 2, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    prompts = [model.config.prompt_template, "Findings of <ImageHere>:", "<ImageHere> Describe the chest radiograph."]
    batched = model.generate(images, mask, prompts, max_new_tokens=12, num_beams=1)
    single = [model.generate(images[i : i + 1], mask[i : i + 1], prompts[i], max_new_tokens=12, num_beams=1)[0]
              for i in range(3)]  # fmt: skip
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)
    ids, attention = model.encode_prompts(prompts)
    assert bool((attention[:, -1] == 1).all()) and bool((attention[:, 0] == 0).any())  # left padding


def test_greedy_generation_drops_finished_reports_with_the_same_text(make_model, monkeypatch):
    model = make_model()
    _perturb(model.projector, "out_norm.weight")
    images = torch.rand(6, 2, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(6, 2, dtype=torch.bool)
    calls = []
    monkeypatch.setattr(model.llm, "generate", lambda *a, **k: calls.append(1) or type(model.llm).generate(
        model.llm, *a, **k))  # fmt: skip
    lean = model.generate(images, mask, max_new_tokens=16)
    assert not calls  # plain greedy search: our loop
    reference = model.generate(images, mask, max_new_tokens=16, output_scores=False)  # a setting it leaves to HF
    assert calls and lean == reference  # (reports of different lengths: tests/networks/test_greedy.py)


def test_meta_tensor_views_reach_the_model_as_plain_tensors(make_model):
    from monai.data import MetaTensor

    model = make_model()
    images = torch.rand(2, 1, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(type(args[0])))
    assert model.generate(MetaTensor(images), max_new_tokens=4) == model.generate(images, max_new_tokens=4)
    assert seen == [torch.Tensor, torch.Tensor]  # no metadata carried through the model and the LLM


def test_generation_settings_and_stopping(make_model):
    model = make_model()
    images = torch.rand(2, 1, 1, IMAGE_SIZE, IMAGE_SIZE)
    settings = model.generation_settings(num_beams=1, length_penalty=2.0)
    assert "length_penalty" not in settings and settings["eos_token_id"] == model.tokenizer.eos_token_id
    assert settings["suppress_tokens"] == [model.image_token_id]
    ids, attention = model.encode_prompts([model.config.prompt_template] * 2)
    embeds, attention = model.prepare_inputs_embeds(ids, attention, images)
    with torch.no_grad():
        raw = model.llm.generate(inputs_embeds=embeds, attention_mask=attention,
                                 **model.generation_settings(max_new_tokens=5, min_new_tokens=5))  # fmt: skip
    assert raw.shape == (2, 5)  # only new tokens
    settings = model.generation_settings(num_beams=3, no_repeat_ngram_size=2, max_new_tokens=16, min_new_tokens=16)
    with torch.no_grad():
        raw = model.llm.generate(inputs_embeds=embeds, attention_mask=attention, **settings)
    assert raw.shape == (2, 16)
    for row in raw.tolist():  # beam search honours no_repeat_ngram_size over the generated tokens
        assert len(set(zip(row, row[1:]))) == len(row) - 1
        assert model.image_token_id not in row
    beams = model.generate(images, num_beams=3, repetition_penalty=2.0, length_penalty=2.0, max_new_tokens=6)
    assert len(beams) == 2 and all(isinstance(t, str) for t in beams)


def test_generation_stops_at_eos(make_model):
    model = make_model()
    eos = model.tokenizer.eos_token_id
    bonus = torch.zeros(len(model.tokenizer))
    bonus[eos] = 100.0  # the LM head predicts EOS whatever the input
    model.base_llm.get_output_embeddings().register_forward_hook(lambda module, args, out: out + bonus)
    images = torch.rand(2, 1, 1, IMAGE_SIZE, IMAGE_SIZE)
    ids, attention = model.encode_prompts([model.config.prompt_template] * 2)
    embeds, attention = model.prepare_inputs_embeds(ids, attention, images)
    for min_new in (0, 3):
        with torch.no_grad():
            settings = model.generation_settings(max_new_tokens=10, min_new_tokens=min_new)
            raw = model.llm.generate(inputs_embeds=embeds, attention_mask=attention, **settings)
        assert raw.shape == (2, min_new + 1) and bool((raw[:, -1] == eos).all())
    assert model.generate(images, min_new_tokens=0) == ["", ""]


# ------------------------------------------------------------------------------------------------------------------
# saving and loading
# ------------------------------------------------------------------------------------------------------------------


def test_tiny_model_directory_is_self_contained(make_model, tmp_path, reports):
    model = make_model()
    _perturb(model.projector, "out_norm.weight")
    images = torch.rand(2, 2, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    expected = model.generate(images, num_beams=2, max_new_tokens=10)
    model.save_pretrained(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"generator.json", "modules.safetensors", "tokenizer", "llm"} <= names and "llm_lora" not in names
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in (tmp_path / "m").rglob("*"))
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "m")
    assert loaded.generate(images, num_beams=2, max_new_tokens=10) == expected
    batch, _ = _batch(model, reports[:2], views=[2, 1])
    torch.testing.assert_close(_logits(loaded, batch), _logits(model, batch))
    meta = json.loads((tmp_path / "m" / "generator.json").read_text())
    assert meta["bases"]["llm"]["source"] == "config" and meta["num_image_tokens"] == model.num_image_tokens


def test_real_base_saves_only_deltas_and_refuses_another_base(make_model, llm_dirs, other_llama_dir, tmp_path, reports):
    from peft import PeftModel

    model = make_model(llm_path=str(llm_dirs["llama"]), tokenizer_path=None)
    apply_stage(model, "stage2")
    _perturb(model.llm, "lora_B")
    batch, _ = _batch(model, reports[:2], views=[1, 2])
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert "llm" not in names and {"llm_lora", "tokenizer", "modules.safetensors"} <= names
    assert (tmp_path / "m" / "llm_lora" / "adapter_model.safetensors").is_file()

    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(_logits(loaded, batch), expected)
    # peft loads the adapter on its own base
    base = load_causal_lm(llm_dirs["llama"])
    peft = PeftModel.from_pretrained(base, str(tmp_path / "m" / "llm_lora")).eval()
    ids = batch["input_ids"].clamp(max=base.config.vocab_size - 1)
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=ids).logits, model.eval().llm(input_ids=ids).logits)

    with pytest.raises(CheckpointMismatchError, match="different model"):
        RadiologyReportGenerator.from_pretrained(tmp_path / "m", llm_path=other_llama_dir)
    with pytest.raises(ModelConfigError, match="not found"):
        RadiologyReportGenerator.from_pretrained(tmp_path / "m", llm_path=tmp_path / "moved")


def test_stage0_then_lora_saves_full_llm_and_adapter(make_model, llm_dirs, tmp_path, reports):
    model = make_model(llm_path=str(llm_dirs["gpt2"]), tokenizer_path=None)
    apply_stage(model, "stage0")
    _perturb(model.llm, "ln_f.weight")  # "trained" base weights
    apply_stage(model, "stage2")
    _perturb(model.llm, "lora_B", seed=1)
    batch, _ = _batch(model, reports[:2], views=[1, 1])
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "llm" / "config.json").is_file() and (tmp_path / "m" / "llm_lora").is_dir()
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "m", llm_path=tmp_path / "ignored")
    torch.testing.assert_close(_logits(loaded, batch), expected)
    assert loaded.trained == {"llm"}


def test_lora_merge_gives_same_logits(make_model, tmp_path, reports):
    from transformers import AutoModelForCausalLM

    model = make_model()
    apply_stage(model, "stage2")
    _perturb(model.llm, "lora_B")
    batch, _ = _batch(model, reports[:2], views=[2, 2])
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert not (tmp_path / "merged" / "llm_lora").exists()
    torch.testing.assert_close(_logits(model, batch), expected)  # the live model is unmerged again
    merged = RadiologyReportGenerator.from_pretrained(tmp_path / "merged")
    assert not merged.has_llm_lora
    torch.testing.assert_close(_logits(merged, batch), expected, atol=1e-5, rtol=1e-4)
    standalone = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "llm", local_files_only=True)
    assert not any("lora" in name for name in standalone.state_dict())
    assert (tmp_path / "merged" / "llm" / "tokenizer.json").is_file()


def test_encoder_lora_delta_round_trip(make_model, encoder_dirs, tmp_path, reports):
    model = make_model(encoder="hf", encoder_path=str(encoder_dirs["swin"]), encoder_options={})
    summary = apply_stage(model, "delta")
    assert model.has_encoder_lora and summary["components"]["llm"]["trainable"] == 0
    _perturb(model.encoder, "lora_B")
    batch, _ = _batch(model, reports[:2], views=[1, 2])
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert "encoder_lora" in names and "encoder" not in names
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(_logits(loaded, batch), expected)
    with pytest.raises(CheckpointMismatchError):
        RadiologyReportGenerator.from_pretrained(tmp_path / "m", encoder_path=encoder_dirs["vit"])


def test_small_cnn_encoder_lora(make_model, tmp_path, reports):
    model = make_model()
    apply_stage(model, "delta")
    _perturb(model.encoder, "lora_B")
    batch, _ = _batch(model, reports[:1], views=[2])
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(_logits(RadiologyReportGenerator.from_pretrained(tmp_path / "m"), batch), expected)


def test_smaller_llm_vocabulary_is_resized_deterministically(tokenizer_dir, tmp_path, reports):
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    small = load_causal_lm(options={**tiny_config().llm_options, "vocab_size": len(tokenizer) - 3})
    small.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = RadiologyReportGenerator.from_config(tiny_config(llm_path=str(tmp_path / "base")))
    emb = model.llm.get_input_embeddings().weight
    assert emb.shape[0] == len(tokenizer)
    torch.testing.assert_close(emb[-1], emb[:-3].mean(dim=0))
    apply_stage(model, "stage1")
    model.save_pretrained(tmp_path / "m")
    batch, _ = _batch(model, reports[:2], views=[1, 1])
    torch.testing.assert_close(_logits(RadiologyReportGenerator.from_pretrained(tmp_path / "m"), batch),
                               _logits(model, batch))  # fmt: skip


# ------------------------------------------------------------------------------------------------------------------
# families, memory, dtype, config
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_llm_family_from_directory(make_model, llm_dirs, family, reports):
    model = make_model(llm_path=str(llm_dirs[family]), tokenizer_path=None)
    assert model.llm_config.model_type == family
    apply_stage(model, "stage2")  # default LoRA targets of the family
    batch, _ = _batch(model, reports[:2], views=[1, 2])
    loss = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"]).loss
    loss.backward()
    lora_grads = [p.grad for n, p in model.llm.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    texts = model.generate(batch["image"], batch["view_mask"], max_new_tokens=4, num_beams=2)
    assert len(texts) == 2


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_encoder_family_in_generator(make_model, encoder_dirs, family, reports):
    model = make_model(encoder="hf", encoder_path=str(encoder_dirs[family]), encoder_options={}, image_size=None)
    assert model.num_image_tokens == 4 and model.config.image_size == IMAGE_SIZE  # read from the model config
    batch, _ = _batch(model, reports[:2], views=[2, 1])
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"])
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("kind", ["monai_densenet121", "monai_vit"])
def test_monai_encoders_in_generator(make_model, kind, reports):
    if kind == "monai_vit":
        pytest.importorskip("einops")
        options = {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2}
    else:
        options = {}
    model = make_model(encoder=kind, encoder_options=options, projector="linear")
    assert model.num_image_tokens == (1 if kind == "monai_densenet121" else 16)  # 32 px: 1x1 and 4x4 grids
    batch, _ = _batch(model, reports[:2], views=[1, 2])
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"])
    assert torch.isfinite(out.loss)


def test_gradient_checkpointing_gives_same_gradients(make_model, reports):
    plain, checkpointed = make_model(), make_model(gradient_checkpointing=True)
    assert checkpointed.base_llm.is_gradient_checkpointing and not plain.base_llm.is_gradient_checkpointing
    batch, _ = _batch(plain, reports[:2], views=[1, 2])
    for model in (plain, checkpointed):
        model.train()
        model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"],
              batch["view_mask"]).loss.backward()  # fmt: skip
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_bfloat16_keeps_projector_in_float32(make_model, reports):
    model = make_model(dtype="bfloat16")
    assert model.base_llm.dtype == torch.bfloat16 and next(model.encoder.parameters()).dtype == torch.bfloat16
    assert next(model.projector.parameters()).dtype == torch.float32
    batch, _ = _batch(model, reports[:1], views=[1])
    assert torch.isfinite(model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"]).loss)


def test_config_round_trip_and_errors(tmp_path, reports):
    config = embedded_default_config(num_queries=8)
    assert config.encoder == "small_cnn" and config.image_size == 128 and config.llm_options["hidden_size"] == 256
    config.save(tmp_path / "cfg.json")
    assert GeneratorConfig.load(tmp_path / "cfg.json") == config
    assert GeneratorConfig().generation["num_beams"] == 3 and GeneratorConfig().generation["repetition_penalty"] == 2.0
    with pytest.raises(ModelConfigError, match="unknown generator settings"):
        GeneratorConfig.from_dict({"encoder": "small_cnn", "vision_tower": "x"})
    with pytest.raises(ModelConfigError, match="projector"):
        GeneratorConfig(projector="qformer")
    with pytest.raises(ModelConfigError, match="generation"):
        GeneratorConfig(generation={"beams": 3})
    with pytest.raises(ModelConfigError, match="tokenizer"):
        build_generator(tiny_config())
    model = build_generator(tiny_config().to_dict(), corpus=reports)
    assert model.tokenizer.convert_tokens_to_ids("<image>") == model.image_token_id
    with pytest.raises(ModelFileError, match="no generator.json"):
        RadiologyReportGenerator.from_pretrained(tmp_path)


def test_fingerprint_tracks_weights_not_volatile_config(llm_dirs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(llm_dirs["llama"], copy)
    assert fingerprint(copy) == fingerprint(llm_dirs["llama"])
    cfg = json.loads((copy / "config.json").read_text())
    cfg["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(cfg))
    assert fingerprint(copy) == fingerprint(llm_dirs["llama"])
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF if len(data) <= 4 << 20 else 0
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert fingerprint(copy) != fingerprint(llm_dirs["llama"])


@pytest.mark.parametrize("path", [False, True])
def test_hf_encoder_trained_in_full_is_saved_as_model_directory(make_model, encoder_dirs, tmp_path, reports, path):
    from monai_r2gen.networks.factory import tiny_encoder_options

    if path:  # a real base whose image processor says mean 0.4 / std 0.2
        model = make_model(encoder="hf", encoder_path=str(encoder_dirs["vit"]), encoder_options={})
        assert model.config.image_mean == pytest.approx([0.4] * 3)
    else:  # built from a config: random init, so always saved
        model = make_model(encoder="hf", encoder_options=tiny_encoder_options("vit", IMAGE_SIZE))
    apply_stage(model, "deep")
    _perturb(model.encoder, "layernorm.weight")
    batch, _ = _batch(model, reports[:2], views=[2, 1])
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "encoder" / "config.json").is_file()
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "m", encoder_path=tmp_path / "not_needed")
    assert loaded.encoder.normalization == model.encoder.normalization
    torch.testing.assert_close(_logits(loaded, batch), expected)


def test_embedded_default_build(reports):
    model = build_generator(corpus=reports)
    assert model.encoder.num_tokens == 64 and model.encoder.out_dim == 128
    assert model.finding_head is None and model.attribute_head is not None and model.attribute_head.dense
    assert model.num_image_tokens == 16 + 30  # visual + attribute slot prompts
    assert model.config.max_length == 176 and model.config.attribute_box_weight > 0
    assert model.config.prompt_template.startswith("<Img><ImageHere></Img>")
    assert model.llm_config.model_type == "llama" and model.llm_config.num_hidden_layers == 4
    assert model.llm_config.vocab_size == len(model.tokenizer)
    assert sum(p.numel() for p in model.llm.parameters()) < 5_000_000
    assert model.config.generation["num_beams"] == 1  # greedy for the tiny default
