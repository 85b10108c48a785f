"""Re-written phantom reports and the paraphrase ceiling of NLG scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monai_r2gen.data.synthetic import generate_dataset, rewrite_reports, study_report
from monai_r2gen.data.synthetic.ceiling import read_study_records, rewrite_stream
from monai_r2gen.data.synthetic.study import study_seed
from monai_r2gen.errors import InputFileError, MetricError
from monai_r2gen.evaluation import cleaned_nlg_scores, paraphrase_ceiling
from monai_r2gen.metrics.attributes import read_finding_attributes

SEED = 21
N_TEST = 200
NO_JAVA = ("BLEU", "ROUGE-L", "CIDEr")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """200 phantom test studies (64 px PNG)."""
    out = tmp_path_factory.mktemp("ceiling_phantoms")
    summary = generate_dataset(out, N_TEST, seed=SEED, image_size=64, formats=("png",), splits=(0.0, 0.0, 1.0))
    entries = json.loads(Path(summary["annotation"]).read_text())["test"]
    assert len(entries) == N_TEST
    return {"entries": entries, "ids": [e["id"] for e in entries], "findings_file": summary["findings"]}


def test_the_study_stream_reproduces_the_original_reports(phantoms) -> None:
    """What findings.json records is enough to write each report again: with the study's own report stream the
    writer gives back the original text (so re-writes with other streams differ only in the paraphrases)."""
    records = read_study_records(phantoms["findings_file"])
    for e in phantoms["entries"]:
        index = int(e["id"].removeprefix("syn"))
        rng = np.random.default_rng(study_seed(SEED, index).spawn(4)[3])
        assert study_report(records[e["id"]], rng).full == e["report_full"], e["id"]


@pytest.mark.parametrize(("section", "field"), [("findings", "report"), ("full", "report_full")])
def test_rewrites_keep_every_attribute_and_change_the_wording(phantoms, section, field) -> None:
    rewrites = rewrite_reports(phantoms["findings_file"], phantoms["ids"], seed=1, section=section)
    assert len(rewrites) == N_TEST
    originals = [e[field] for e in phantoms["entries"]]
    for e, new, old in zip(phantoms["entries"], rewrites, originals):
        assert read_finding_attributes(new) == read_finding_attributes(old), e["id"]
    changed = sum(new != old for new, old in zip(rewrites, originals))
    assert changed >= 0.9 * N_TEST
    if section == "full":
        assert all(r.startswith("FINDINGS: ") and "\n\nIMPRESSION: " in r for r in rewrites)


def test_rewrites_depend_on_seed_and_study_only(phantoms) -> None:
    ids, path = phantoms["ids"], phantoms["findings_file"]
    one = rewrite_reports(path, ids, seed=1)
    assert rewrite_reports(path, ids, seed=1) == one
    assert sum(a != b for a, b in zip(one, rewrite_reports(path, ids, seed=2))) >= 0.9 * N_TEST
    # a study's re-write does not depend on which other studies are asked for, nor on their order
    picked = ids[::-7]
    assert rewrite_reports(path, picked, seed=1) == [one[ids.index(i)] for i in picked]
    assert rewrite_stream(1, "a").random() != rewrite_stream(1, "b").random() != rewrite_stream(2, "a").random()


def test_paraphrase_ceiling_of_the_phantom_reports(phantoms) -> None:
    refs = [e["report"] for e in phantoms["entries"]]
    # sanity check of the scoring path: references against themselves
    assert cleaned_nlg_scores(refs, refs, metrics=NO_JAVA)["BLEU-4"] == pytest.approx(1.0)
    ceiling = paraphrase_ceiling(phantoms["findings_file"], phantoms["ids"], refs, nlg_metrics=NO_JAVA)
    mean, per_seed = ceiling["mean"], ceiling["per_seed"]
    seeds = ", ".join(f"{s}: {v['BLEU-4']:.4f}" for s, v in per_seed.items())
    print(
        f"paraphrase ceiling on {N_TEST} phantom test studies: BLEU-4 {mean['BLEU-4']:.4f} (seeds {seeds}), "
        f"CIDEr {mean['CIDEr']:.3f}"
    )
    assert ceiling["seeds"] == [1, 2, 3] and set(per_seed) == {1, 2, 3}
    assert 0.2 < mean["BLEU-4"] < 0.6
    assert all(0.2 < v["BLEU-4"] < 0.6 for v in per_seed.values())
    assert mean["BLEU-4"] == pytest.approx(np.mean([v["BLEU-4"] for v in per_seed.values()]))
    assert set(mean) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert mean["BLEU-1"] > mean["BLEU-4"]
    # the full reports (annotation.json's report_full) have their own ceiling
    full = paraphrase_ceiling(phantoms["findings_file"], phantoms["ids"], [e["report_full"] for e in
                              phantoms["entries"]], seeds=(5,), section="full", nlg_metrics=("BLEU",))  # fmt: skip
    assert 0.2 < full["mean"]["BLEU-4"] < 0.6 and full["section"] == "full"


def test_rewrite_errors(phantoms, tmp_path) -> None:
    path = phantoms["findings_file"]
    with pytest.raises(InputFileError, match="no record for 1 study id"):
        rewrite_reports(path, [phantoms["ids"][0], "nope"], seed=1)
    with pytest.raises(ValueError, match="section"):
        rewrite_reports(path, phantoms["ids"][:1], seed=1, section="summary")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"s1": [{"kind": "edema", "side": "bilateral", "severity": "mild"}]}))
    with pytest.raises(InputFileError, match="not a findings.json of the synthetic generator"):
        rewrite_reports(plain, ["s1"], seed=1)
    with pytest.raises(InputFileError, match="not found"):
        rewrite_reports(tmp_path / "missing.json", ["s1"], seed=1)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"studies": {"s1": {"views": [], "findings": [{"kind": "pneumonia"}]}}}))
    with pytest.raises(InputFileError, match="unknown finding 'pneumonia'"):
        rewrite_reports(broken, ["s1"], seed=1)
    with pytest.raises(MetricError, match="pair up"):
        paraphrase_ceiling(path, phantoms["ids"][:2], ["one reference"], nlg_metrics=NO_JAVA)
    with pytest.raises(MetricError, match="seed"):
        paraphrase_ceiling(path, phantoms["ids"][:1], ["one reference"], seeds=(), nlg_metrics=NO_JAVA)
