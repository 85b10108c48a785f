"""The extra language-model loss on attribute words (sides, sizes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_r2gen.data.reports import IGNORE_INDEX
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.attribute_words import ATTRIBUTE_WORDS, attribute_word_ids, attribute_word_loss
from monai_r2gen.networks.generator_config import GeneratorConfig

from .conftest import collate_reports, make_reports


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    """A report tokenizer large enough to write the attribute words as single tokens."""
    from monai_r2gen.data.tokenizer import train_report_tokenizer

    path = tmp_path_factory.mktemp("word_tokenizer")
    train_report_tokenizer(make_reports(400, seed=1), vocab_size=1200, save_dir=path)
    return str(path)


def test_attribute_words_are_sides_and_sizes():
    for word in ("right", "left", "bilateral", "small", "moderate", "large", "mildly", "patchy"):
        assert word in ATTRIBUTE_WORDS
    for word in ("no", "yes", "none", "lobe", "4"):
        assert word not in ATTRIBUTE_WORDS


def test_word_ids_are_single_token_forms(make_model, word_tokenizer):
    tok = make_model(tokenizer_path=word_tokenizer).tokenizer
    ids = attribute_word_ids(tok)
    right = tok(" right", add_special_tokens=False)["input_ids"]
    assert len(right) == 1 and right[0] in ids  # a word of the reports, one token with its space
    the = tok(" the", add_special_tokens=False)["input_ids"]
    assert the[0] not in ids
    for i in ids:  # never a word piece: each id decodes to a whole attribute word
        assert tok.decode([i]).strip().lower() in ATTRIBUTE_WORDS


def test_loss_is_the_cross_entropy_of_the_chosen_targets_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, 3, 1], [IGNORE_INDEX, IGNORE_INDEX, 3, 2, IGNORE_INDEX]])
    loss = attribute_word_loss(logits, labels, torch.tensor([3]))
    # targets 3 at (0, 1), (0, 3), (1, 2): predicted from the position before each
    picked = torch.stack([logits[0, 0], logits[0, 2], logits[1, 1]])
    torch.testing.assert_close(loss, F.cross_entropy(picked, torch.tensor([3, 3, 3])))
    assert float(attribute_word_loss(logits, labels, torch.tensor([6]))) == 0.0  # no such target: no loss


def test_generator_adds_the_word_loss(make_model, reports, word_tokenizer):
    with pytest.raises(ModelConfigError, match="attribute_word_weight"):
        GeneratorConfig.from_dict({"llm_options": {"model_type": "llama"}, "attribute_word_weight": -1.0})
    sided = [r for r in reports if " right " in f" {r} "][:2]
    plain = make_model(tokenizer_path=word_tokenizer)
    weighted = make_model(tokenizer_path=word_tokenizer, attribute_word_weight=2.0)
    weighted.load_state_dict(plain.state_dict())
    assert "_attribute_word_ids" not in weighted.state_dict()  # derived from the tokenizer, never saved
    batch, _ = collate_reports(plain, sided, views=[1, 1], max_length=200)
    args = (batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"])
    plain.eval()
    weighted.eval()
    with torch.no_grad():
        base, out = plain(*args), weighted(*args)
    word = attribute_word_loss(base.logits, batch["labels"], weighted._attribute_word_ids)
    assert float(word) > 0
    torch.testing.assert_close(out.attribute_word_loss, word)
    torch.testing.assert_close(out.loss, base.loss + 2.0 * word)
