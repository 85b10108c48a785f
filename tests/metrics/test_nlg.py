"""NLG scores: parity with pycocoevalcap, no truncation, tokenization, METEOR process life, Ignite/MONAI metric."""

from __future__ import annotations

import json
import socket

import pytest
from ignite.engine import Engine
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from monai_r2gen.errors import MetricError
from monai_r2gen.metrics.nlg import NLG_KEYS, NLGMetric, nlg_scores, report_output_transform, tokenize_reports

REFS = [
    "The heart size is normal. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "ET tube terminates 4 cm above the carina. Lungs are clear.",
    "Patchy opacity in the right lower lobe, concerning for pneumonia.",
]
HYPS = [
    "Heart size is normal. No pleural effusion.",
    "Moderate cardiomegaly. Small bilateral pleural effusions.",
    "",
    "Right lower lobe opacity may represent pneumonia.",
]


def _direct(refs: list[str], hyps: list[str]) -> tuple[dict, dict]:
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    return gts, res


def test_simple_tokenizer() -> None:
    out = tokenize_reports(["The Heart is NORMAL.  Size 1.5 cm, x-ray (left);\nPICC-line"], "simple")
    assert out == ["the heart is normal . size 1.5 cm , x-ray ( left ) ; picc-line"]
    assert tokenize_reports(["  a\n b  "], "none") == ["a b"]
    with pytest.raises(MetricError, match="tokenize"):
        tokenize_reports(["x"], "spacy")


def test_parity_with_pycocoevalcap_without_java() -> None:
    scores = nlg_scores(REFS, HYPS, metrics=("BLEU", "ROUGE-L", "CIDEr"))
    toks = tokenize_reports(REFS + HYPS, "simple")
    gts, res = _direct(toks[: len(REFS)], toks[len(REFS) :])
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        assert abs(scores[f"BLEU-{n + 1}"] - bleu[n]) < 1e-9
    assert abs(scores["ROUGE-L"] - Rouge().compute_score(gts, res)[0]) < 1e-9
    assert abs(scores["CIDEr"] - Cider().compute_score(gts, res)[0]) < 1e-9
    assert list(scores) == [k for k in NLG_KEYS if k != "METEOR"]


def test_references_are_not_truncated() -> None:
    long_ref = " ".join(["The lungs are clear."] * 40) + " There is a small left pleural effusion."
    truncated = " ".join(long_ref.split()[:60])  # what a max_length cut of the reference would score against
    hyp = "The lungs are clear. There is a small left pleural effusion."
    refs = [long_ref, REFS[0]]
    full = nlg_scores(refs, [hyp, HYPS[0]], metrics=("BLEU", "ROUGE-L", "CIDEr"))
    cut = nlg_scores([truncated, REFS[0]], [hyp, HYPS[0]], metrics=("BLEU", "ROUGE-L", "CIDEr"))
    assert full["ROUGE-L"] != pytest.approx(cut["ROUGE-L"])
    assert full["BLEU-4"] != pytest.approx(cut["BLEU-4"])
    # and the full reference is what pycocoevalcap sees
    toks = tokenize_reports(refs + [hyp, HYPS[0]])
    gts, res = _direct(toks[:2], toks[2:])
    assert abs(full["ROUGE-L"] - Rouge().compute_score(gts, res)[0]) < 1e-9


@pytest.mark.parametrize(
    ("refs", "hyps", "kwargs", "match"),
    [
        (REFS, HYPS[:2], {}, "pair up"),
        ([], [], {}, "no reports"),
        ("a", "b", {}, "sequences"),
        (["a"], [None], {}, "not a str"),
        (REFS, HYPS, {"metrics": ("BLEU", "SPICE")}, "unknown NLG metric"),
        (REFS, HYPS, {"tokenize": "bpe"}, "tokenize"),
    ],
)
def test_invalid_inputs(refs, hyps, kwargs, match) -> None:
    with pytest.raises(MetricError, match=match):
        nlg_scores(refs, hyps, **kwargs)


@pytest.mark.slow
def test_meteor_parity_and_one_java_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """All seven scores vs pycocoevalcap to 1e-9; METEOR's Java process is started once and closed (2 JVM starts)."""
    from pycocoevalcap.meteor import meteor as meteor_module

    started = []
    original_init = meteor_module.Meteor.__init__

    def counting_init(self) -> None:
        original_init(self)
        started.append(self)

    monkeypatch.setattr(meteor_module.Meteor, "__init__", counting_init)
    scores = nlg_scores(REFS, HYPS)
    assert len(started) == 1
    assert started[0].meteor_p.poll() is not None  # closed before nlg_scores returned
    assert list(scores) == list(NLG_KEYS)

    toks = tokenize_reports(REFS + HYPS)
    gts, res = _direct(toks[: len(REFS)], toks[len(REFS) :])
    direct = meteor_module.Meteor()
    try:
        meteor, _ = direct.compute_score(gts, res)
    finally:
        direct.meteor_p.stdin.close()
        direct.meteor_p.kill()
        direct.meteor_p.wait()
    assert abs(scores["METEOR"] - meteor) < 1e-9
    assert 0.0 < scores["METEOR"] < 1.0


@pytest.mark.slow
def test_ptb_tokenizer_matches_pycocoevalcap() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = ["The heart is NORMAL. No effusion!", "Size 1.5 cm, (left) x-ray; PICC-line."]
    ours = tokenize_reports(texts, "ptb")
    theirs = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert ours == [theirs[0][0], theirs[1][0]]
    assert ours[0] == "the heart is normal no effusion"


# ---------------------------------------------------------------------------------------------------- Ignite / MONAI


def test_nlg_metric_in_an_ignite_engine_with_ids_deduplicated() -> None:
    ids = ["s1", "s2", "s3", "s4"]
    batches = [
        {"pred_report": HYPS[:2], "report": REFS[:2], "id": ids[:2]},
        {"pred_report": HYPS[2:], "report": REFS[2:], "id": ids[2:]},
        {"pred_report": HYPS[:1], "report": REFS[:1], "id": ids[:1]},  # sampler padding repeats s1
    ]
    engine = Engine(lambda e, b: b)
    metric = NLGMetric(output_transform=report_output_transform(), metrics=("BLEU", "CIDEr"))
    metric.attach(engine, "nlg")
    state = engine.run(batches)
    expected = nlg_scores(REFS, HYPS, metrics=("BLEU", "CIDEr"))
    assert state.metrics["nlg"] == pytest.approx(expected, abs=1e-12)
    assert state.metrics["BLEU-4"] == pytest.approx(expected["BLEU-4"], abs=1e-12)
    # a second epoch starts from scratch
    state = engine.run(batches[:2], max_epochs=1)
    assert state.metrics["CIDEr"] == pytest.approx(expected["CIDEr"], abs=1e-12)


def test_nlg_metric_as_monai_key_metric() -> None:
    from monai.engines import Evaluator

    loader = [
        [{"pred_report": h, "report": r, "id": str(i)} for i, (h, r) in enumerate(zip(HYPS[:2], REFS[:2]))],
        [{"pred_report": h, "report": r, "id": str(i + 2)} for i, (h, r) in enumerate(zip(HYPS[2:], REFS[2:]))],
    ]
    metric = NLGMetric(
        output_transform=report_output_transform("pred_report", "report", "id"),
        metrics=("BLEU", "CIDEr"),
        key=lambda s: 0.5 * s["BLEU-4"] + 0.5 * s["CIDEr"],
    )
    evaluator = Evaluator(
        device="cpu",
        val_data_loader=loader,
        iteration_update=lambda engine, batch: batch,
        key_val_metric={"val_score": metric},
    )
    evaluator.run()
    expected = nlg_scores(REFS, HYPS, metrics=("BLEU", "CIDEr"))
    assert evaluator.state.metrics["val_score"] == pytest.approx(0.5 * expected["BLEU-4"] + 0.5 * expected["CIDEr"])
    assert evaluator.state.best_metric == pytest.approx(evaluator.state.metrics["val_score"])
    assert evaluator.state.metrics["BLEU-1"] == pytest.approx(expected["BLEU-1"])


def test_nlg_metric_rejects_bad_batches() -> None:
    metric = NLGMetric(metrics=("BLEU",))
    with pytest.raises(MetricError, match="hypotheses but"):
        metric.update((["a", "b"], ["a"]))
    with pytest.raises(MetricError, match="at least one report"):
        metric.compute()
    with pytest.raises(MetricError, match="tokenize"):
        NLGMetric(tokenize="bpe")


def _gather_worker(local_rank: int, out_dir: str) -> None:
    import ignite.distributed as idist

    rank = idist.get_rank()
    metric = NLGMetric(metrics=("BLEU", "ROUGE-L", "CIDEr"))
    # rank 0 holds studies 0 and 2, rank 1 holds 1 and 3 plus a repeat of 0 (DistributedSampler padding)
    mine = [0, 2] if rank == 0 else [1, 3, 0]
    metric.update(([HYPS[i] for i in mine], [REFS[i] for i in mine], [f"s{i}" for i in mine]))
    with open(f"{out_dir}/rank{rank}.json", "w") as fh:
        json.dump({"world": idist.get_world_size(), "scores": metric.compute()}, fh)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_nlg_metric_gathers_across_two_gloo_processes(tmp_path) -> None:
    import ignite.distributed as idist

    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=_free_port()) as parallel:
        parallel.run(_gather_worker, str(tmp_path))
    expected = nlg_scores(
        [REFS[i] for i in (0, 2, 1, 3)], [HYPS[i] for i in (0, 2, 1, 3)], metrics=("BLEU", "ROUGE-L", "CIDEr")
    )
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["world"] == 2
        assert got["scores"] == pytest.approx(expected, abs=1e-12)
