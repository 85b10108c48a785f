"""Tests of the report tokenizer: byte-level BPE training, round trip, save/load, image token set-up."""

from __future__ import annotations

import itertools

import pytest
from transformers import AutoTokenizer, GPT2Tokenizer

from monai_r2gen.data.reports import IMAGE_TOKEN, clean_report
from monai_r2gen.data.tokenizer import SPECIAL_TOKENS, add_image_token, train_report_tokenizer
from monai_r2gen.errors import ModelConfigError, ReportError

_SENTENCES = (
    "The heart size is normal.",
    "The cardiomediastinal silhouette is within normal limits.",
    "Mild cardiomegaly is unchanged.",
    "The lungs are clear.",
    "There is no focal consolidation, pleural effusion or pneumothorax.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Patchy opacity in the right lower lobe may reflect pneumonia.",
    "A 2.5 cm nodule projects over the left upper lobe.",
    "Median sternotomy wires are intact.",
    "Right-sided PICC terminates in the mid SVC.",
    "No acute osseous abnormality.",
    "Degenerative changes of the thoracic spine.",
    "Pulmonary vascular congestion without frank edema.",
    "Hyperinflated lungs consistent with COPD.",
)
# 50 cleaned reports built from 3-sentence combinations of the sentences above
REPORT_CORPUS = [
    clean_report(" ".join(combo), "mimic_cxr") for combo in itertools.islice(itertools.combinations(_SENTENCES, 3), 50)
]


def make_tokenizer(vocab_size: int = 600, **kwargs):
    """A byte-level BPE tokenizer trained on :data:`REPORT_CORPUS` (shared by the data tests)."""
    return train_report_tokenizer(REPORT_CORPUS, vocab_size=vocab_size, **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_corpus_is_fifty_distinct_cleaned_reports():
    assert len(set(REPORT_CORPUS)) == 50
    assert all(r.endswith(" .") and r == r.lower() for r in REPORT_CORPUS)


def test_round_trip_on_training_and_unseen_reports(tokenizer):
    unseen = "Interval increase in a 13.2 mm right apical nodule. ET tube 4 cm above the carina."
    unseen = clean_report(unseen, "mimic_cxr")
    for text in [*REPORT_CORPUS, unseen, "zygote qux 123 ."]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id  # the post-processor prepends BOS
        assert tokenizer.eos_token_id not in ids  # EOS is appended by TokenizeReportd, not by the tokenizer
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    # byte-level decoding gives clean text, not "Ġ"-marked pieces
    assert "Ġ" not in tokenizer.decode(tokenizer(REPORT_CORPUS[0])["input_ids"])


def test_bpe_merges_compress_reports(tokenizer):
    text = REPORT_CORPUS[0]
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < len(text.encode()) / 3


def test_special_tokens_and_image_token(tokenizer):
    assert tokenizer.bos_token == SPECIAL_TOKENS["bos_token"]
    assert tokenizer.eos_token == SPECIAL_TOKENS["eos_token"]
    assert tokenizer.pad_token == SPECIAL_TOKENS["pad_token"]
    assert tokenizer.unk_token == SPECIAL_TOKENS["unk_token"]
    assert tokenizer.padding_side == "right"
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert IMAGE_TOKEN in tokenizer.all_special_tokens
    ids = tokenizer(f"a{IMAGE_TOKEN}{IMAGE_TOKEN}b", add_special_tokens=False)["input_ids"]
    assert ids.count(image_id) == 2  # never split
    assert IMAGE_TOKEN not in tokenizer.decode(ids, skip_special_tokens=True)
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, image_id}) == 4


def test_prompt_text_is_learned_by_default(tokenizer):
    prompt = "Generate a comprehensive and detailed diagnosis report for this chest xray image."
    with_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    reports_only = make_tokenizer(prompt_template=None)
    assert with_prompt < len(reports_only(prompt, add_special_tokens=False)["input_ids"])


def test_save_and_load_with_auto_tokenizer(tmp_path):
    trained = make_tokenizer(save_dir=tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    for text in REPORT_CORPUS[:10]:
        assert loaded(text)["input_ids"] == trained(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(loaded, name) == getattr(trained, name)
    assert loaded.convert_tokens_to_ids(IMAGE_TOKEN) == trained.convert_tokens_to_ids(IMAGE_TOKEN)
    assert IMAGE_TOKEN in loaded.all_special_tokens
    assert loaded.padding_side == "right"
    assert len(loaded) == len(trained)


def test_training_input_errors():
    with pytest.raises(ModelConfigError, match="vocab_size"):
        train_report_tokenizer(REPORT_CORPUS, vocab_size=100)
    with pytest.raises(ReportError, match="non-empty"):
        train_report_tokenizer(["", "   "], vocab_size=400)


def _gpt2_like(tokenizer) -> GPT2Tokenizer:
    """A GPT-2 tokenizer (BOS = EOS = <|endoftext|>, no BOS added, no pad) over a small byte-level vocabulary."""
    vocab = {tok: i for tok, i in tokenizer.get_vocab().items() if not tok.startswith("<")}
    vocab = {tok: i for i, tok in enumerate(sorted(vocab, key=vocab.get))}
    vocab["<|endoftext|>"] = len(vocab)
    return GPT2Tokenizer(vocab=vocab, merges=[])


def test_add_image_token_to_gpt2_style_tokenizer(tokenizer):
    gpt2 = _gpt2_like(tokenizer)
    assert gpt2.pad_token is None
    assert gpt2("the heart")["input_ids"][0] != gpt2.bos_token_id  # GPT-2 adds no BOS
    gpt2.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    size = len(gpt2)
    image_id = add_image_token(gpt2)
    assert image_id == size  # appended to the vocabulary
    assert len(gpt2) == size + 1
    assert gpt2.pad_token_id == gpt2.eos_token_id  # pad falls back to EOS
    assert {"<extra>", IMAGE_TOKEN} <= set(gpt2.all_special_tokens)  # existing extra special tokens are kept
    assert gpt2(f"x{IMAGE_TOKEN}y", add_special_tokens=False)["input_ids"].count(image_id) == 1
    # idempotent
    assert add_image_token(gpt2) == image_id
    assert len(gpt2) == size + 1


def test_add_image_token_keeps_an_existing_pad_token(tokenizer):
    assert add_image_token(tokenizer) == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tokenizer.pad_token == SPECIAL_TOKENS["pad_token"]
