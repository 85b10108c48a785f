"""CheXbert / RadGraph adapters: local paths only, clean skip, clear errors, CheXbert head mapping."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from monai_r2gen.errors import MetricError
from monai_r2gen.metrics.clinical import ce_scores
from monai_r2gen.metrics.external import (
    CHEXBERT_CONDITIONS,
    CheXbertLabeler,
    _CheXbertNet,
    _hub_offline,
    chexbert_scores,
    radgraph_scores,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "small", "left", "effusion", "heart", "is", "normal", "."]


def make_tiny_chexbert(folder: Path) -> tuple[str, str]:
    """A CheXbert-format checkpoint with a tiny BERT whose heads answer fixed classes regardless of the text."""
    from transformers import BertConfig

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=32, max_position_embeddings=64, type_vocab_size=2,
    )  # fmt: skip
    torch.manual_seed(0)
    net = _CheXbertNet(config)
    classes = [1, 2, 3] + [0] * 10 + [1]  # ECM positive, Cardiomegaly negative, Lung Opacity uncertain, No Finding 1
    with torch.no_grad():
        for head, cls in zip(net.linear_heads, classes):
            head.weight.zero_()
            head.bias.fill_(-5.0)
            head.bias[cls] = 5.0
    state = {"module." + k: v for k, v in net.state_dict().items()}  # as saved from nn.DataParallel
    checkpoint = folder / "chexbert.pth"
    torch.save({"epoch": 1, "model_state_dict": state}, checkpoint)
    return str(checkpoint), str(vocab)


@pytest.fixture(scope="module")
def tiny_chexbert(tmp_path_factory) -> tuple[str, str]:
    return make_tiny_chexbert(tmp_path_factory.mktemp("chexbert"))


def test_chexbert_labels_follow_the_head_classes(tiny_chexbert) -> None:
    checkpoint, vocab = tiny_chexbert
    labeler = CheXbertLabeler(checkpoint, vocab, batch_size=2)
    labels = labeler.label_many(["no effusion .", "heart is normal .", ""])
    assert len(labels) == 3
    for row in labels:
        assert row["Enlarged Cardiomediastinum"] == 1.0
        assert row["Cardiomegaly"] == 0.0
        assert row["Lung Opacity"] == -1.0
        assert row["No Finding"] == 1.0
        assert all(row[k] is None for k in CHEXBERT_CONDITIONS[3:13])


def test_chexbert_scores_feed_ce(tiny_chexbert) -> None:
    checkpoint, vocab = tiny_chexbert
    scores = chexbert_scores(["no effusion ."], ["small left effusion ."], checkpoint=checkpoint, tokenizer=vocab)
    labels = CheXbertLabeler(checkpoint, vocab).label_many(["no effusion ."])
    expected = ce_scores(labels, labels)
    assert scores["CheXbert CE-14 micro-F1"] == pytest.approx(expected["CE-14 micro-F1"]) == pytest.approx(1.0)
    assert scores["CheXbert settings"]["labeler"] == "CheXbert (chexbert.pth)"


def test_chexbert_skips_without_a_path(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="monai_r2gen.metrics.external"):
        assert chexbert_scores(["a"], ["b"]) is None
    assert "CheXbert scores skipped" in caplog.text


def test_chexbert_wrong_paths(tmp_path, tiny_chexbert) -> None:
    checkpoint, vocab = tiny_chexbert
    with pytest.raises(MetricError, match="does not exist"):
        chexbert_scores(["a"], ["b"], checkpoint=tmp_path / "missing.pth", tokenizer=vocab)
    with pytest.raises(MetricError, match="tokenizer path"):
        CheXbertLabeler(checkpoint, tmp_path / "no_tokenizer")
    with pytest.raises(MetricError, match="tokenizer"):
        chexbert_scores(["a"], ["b"], checkpoint=checkpoint)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricError, match="could not be loaded"):
        CheXbertLabeler(garbage, vocab)
    other = tmp_path / "other.pth"
    torch.save({"model_state_dict": {"linear.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(MetricError, match="not a CheXbert state dict"):
        CheXbertLabeler(other, vocab)


def test_radgraph_skip_and_wrong_paths(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="monai_r2gen.metrics.external"):
        assert radgraph_scores(["a"], ["b"]) is None
    assert "RadGraph scores skipped" in caplog.text
    with pytest.raises(MetricError, match="does not exist"):
        radgraph_scores(["a"], ["b"], model_dir=tmp_path / "nowhere")
    (tmp_path / "radgraph").mkdir()
    with pytest.raises(MetricError, match="lacks"):
        radgraph_scores(["a"], ["b"], model_dir=tmp_path)


def test_radgraph_without_the_package(tmp_path) -> None:
    from monai.utils import optional_import

    _, has_radgraph = optional_import("radgraph")
    if has_radgraph:
        pytest.skip("radgraph is installed here")
    folder = tmp_path / "radgraph"
    (folder / "vocabulary").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "weights.th").write_bytes(b"")
    with pytest.raises(MetricError, match="pip install radgraph"):
        radgraph_scores(["a"], ["b"], model_dir=tmp_path)


def test_hub_offline_is_restored(monkeypatch) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = hub_constants.HF_HUB_OFFLINE
    with _hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert hub_constants.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ
    assert before == hub_constants.HF_HUB_OFFLINE
