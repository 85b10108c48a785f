"""Tests of the one inference path: the result contract, per-call generation settings, thread safety, bad views."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import monai_r2gen
from monai_r2gen.data.studies import collect_studies
from monai_r2gen.errors import NotAChestRadiographError, RadiographReadError
from monai_r2gen.inference import ReportInference, model_fingerprint
from monai_r2gen.networks.generator import RadiologyReportGenerator
from tests.conftest import REPORT
from tests.data.dicom_factory import chest_like, save_pil

RESULT_KEYS = ["id", "study_instance_uid", "views", "view_positions", "report", "skipped", "generation", "model",
               "seconds"]  # fmt: skip


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> ReportInference:
    return ReportInference(tiny_model_dir, device="cpu", on_error="skip")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four small chest-like PNGs (different noise) and one corrupt PNG (last)."""
    root = tmp_path_factory.mktemp("pngs")
    files = [save_pil(root / f"cxr{i}.png", chest_like(64, 56, bits=8, seed=i), "PNG") for i in range(4)]
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return [*files, corrupt]


def test_result_contract_for_a_dicom_study_folder(engine, tiny_model_dir, synthetic_study) -> None:
    (result,) = engine([synthetic_study])
    assert list(result) == RESULT_KEYS
    (study,) = collect_studies([synthetic_study])
    assert result["id"] == result["study_instance_uid"] == study.study_instance_uid
    assert [Path(p).name for p in result["views"]] == ["b_frontal.dcm", "a_lateral.dcm"]  # frontal first
    assert result["view_positions"] == ["PA", "LL"]
    assert result["report"] == REPORT  # what the tiny model was fitted to write
    assert result["skipped"] == []
    assert result["generation"] == engine.network.generation_settings()
    assert result["generation"]["max_new_tokens"] == 48 and result["generation"]["num_beams"] == 1
    assert result["model"] == {"name": tiny_model_dir.name, "fingerprint": model_fingerprint(tiny_model_dir)}
    assert result["model"]["fingerprint"].startswith("sha256:")
    assert 0 < result["seconds"] < 60
    assert json.loads(json.dumps(result)) == result


def test_study_objects_dicts_and_paths_give_the_same_report(engine, synthetic_study, pngs) -> None:
    (study,) = collect_studies([synthetic_study])
    by_dict, by_study, by_path = engine([{"id": "s1", "image": study.paths}, study, pngs[0]])
    assert by_dict["id"] == "s1" and by_dict["study_instance_uid"] is None
    assert by_dict["view_positions"] == [None, None] and by_dict["views"] == study.paths
    assert by_dict["report"] == by_study["report"]
    assert by_study["id"] == study.study_id and by_study["view_positions"] == ["PA", "LL"]
    assert by_path["id"] == "cxr0" and by_path["views"] == [str(pngs[0])]


def test_generation_settings_are_per_call(engine, synthetic_study) -> None:
    (short,) = engine([synthetic_study], generation={"max_new_tokens": 2})
    (full,) = engine([synthetic_study])
    assert short["generation"]["max_new_tokens"] == 2 and full["generation"]["max_new_tokens"] == 48
    assert short["generation"] == engine.generation_settings({"max_new_tokens": 2})
    assert len(short["report"]) < len(full["report"]) and REPORT.startswith(short["report"])
    assert engine.generation == {}  # the engine itself is never changed


def test_concurrent_calls_give_the_reports_of_sequential_ones(tiny_model_dir, synthetic_study, pngs, monkeypatch):
    loads = []
    original = RadiologyReportGenerator.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(threading.get_ident())
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(RadiologyReportGenerator, "from_pretrained", classmethod(counting))
    jobs = [
        ([synthetic_study], None),
        ([pngs[0], pngs[1]], {"max_new_tokens": 3}),
        ([pngs[2]], {"max_new_tokens": 7}),
        ([pngs[3], synthetic_study], {"num_beams": 2, "max_new_tokens": 12}),
    ]
    sequential_engine = ReportInference(tiny_model_dir, device="cpu", batch_size=2)
    sequential = [sequential_engine(inputs, generation=generation) for inputs, generation in jobs]
    assert len(loads) == 1

    engine = ReportInference(tiny_model_dir, device="cpu", batch_size=2)  # not loaded: the threads race for it
    for _ in range(2):
        barrier = threading.Barrier(len(jobs))

        def work(job, barrier=barrier):
            barrier.wait(timeout=30)
            return engine(job[0], generation=job[1])

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            concurrent = list(pool.map(work, jobs))
        for got, expected in zip(concurrent, sequential):
            assert [r["id"] for r in got] == [r["id"] for r in expected]
            assert [r["report"] for r in got] == [r["report"] for r in expected]
            assert [r["generation"] for r in got] == [r["generation"] for r in expected]
    assert len(loads) == 2  # once per engine
    assert {len(r["report"]) for r in sequential[1]} != {len(r["report"]) for r in sequential[0]}


def test_unreadable_and_extra_views_are_skipped(engine, tiny_model_dir, pngs) -> None:
    corrupt = str(pngs[-1])
    views = [corrupt, str(pngs[0]), str(pngs[1]), str(pngs[2])]
    mixed, only_bad = engine([{"id": "mixed", "image": views}, {"id": "bad", "image": [corrupt]}])
    assert mixed["views"] == [str(pngs[0]), str(pngs[1])]  # the corrupt view left out, the next one taken instead
    assert mixed["report"] == REPORT
    assert [s["file"] for s in mixed["skipped"]] == [corrupt, str(pngs[2])]
    assert "2 views at most" in mixed["skipped"][1]["reason"]  # the model takes 2 views
    assert "report" not in only_bad and "no view could be read" in only_bad["error"]
    assert only_bad["skipped"][0]["file"] == corrupt and only_bad["views"] == []
    with pytest.raises(RadiographReadError, match="corrupt.png"):
        ReportInference(tiny_model_dir, device="cpu")([{"id": "bad", "image": [corrupt]}])


def test_no_usable_input_does_not_load_the_model(tiny_model_dir, tmp_path) -> None:
    engine = ReportInference(tiny_model_dir, device="cpu", on_error="skip")
    (result,) = engine([tmp_path / "missing.dcm"])
    assert "not found" in result["error"] and result["generation"] is None and result["model"] is None
    assert not engine.loaded
    with pytest.raises(RadiographReadError, match="missing.dcm"):
        ReportInference(tiny_model_dir, device="cpu")([tmp_path / "missing.dcm"])


def test_model_fingerprint_follows_the_weights_not_the_extras(tiny_model_dir, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "training_summary.json").write_text("{}")
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    weights = next((copy / "llm").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")
    assert model_fingerprint(copy) != model_fingerprint(tiny_model_dir)


def test_run_inference_writes_reports_and_errors(tiny_model_dir, pngs, tmp_path) -> None:
    assert monai_r2gen.run_inference is not None and monai_r2gen.ReportInference is ReportInference
    out = tmp_path / "out"
    results = monai_r2gen.run_inference([pngs[0], pngs[-1]], tiny_model_dir, out, device="cpu", on_error="skip")
    assert ["report" in r for r in results] == [True, False]
    (row,) = [json.loads(line) for line in (out / "reports.jsonl").read_text().splitlines()]
    assert row == results[0] and (out / "cxr0.txt").read_text().strip() == REPORT
    (error,) = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["id"] == "corrupt" and "error" in error


def test_non_chest_inputs_are_refused_unless_accepted(engine, tiny_model_dir, tmp_path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    if ct is None:
        pytest.skip("pydicom test file CT_small.dcm not available")
    dot = save_pil(tmp_path / "dot.png", np.array([[7]], np.uint8), "PNG")
    refused_ct, refused_dot = engine([ct, dot])
    for result, path, reason in ((refused_ct, ct, "modality CT"), (refused_dot, str(dot), "1 x 1 pixels")):
        assert "report" not in result and "not a chest radiograph" in result["error"] and reason in result["error"]
        assert result["skipped"][0]["file"] == path and reason in result["skipped"][0]["reason"]
    with pytest.raises(NotAChestRadiographError, match=r"CT_small\.dcm: not a chest radiograph: modality CT"):
        ReportInference(tiny_model_dir, device="cpu")([ct])
    accepting = ReportInference(tiny_model_dir, device="cpu", on_error="skip", accept_nonstandard=True)
    assert [r.get("report") for r in accepting([ct, dot])] == [REPORT, REPORT]


def test_empty_and_truncated_files_give_the_precise_reason(engine, synthetic_study, tmp_path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(next(synthetic_study.glob("*.dcm")).read_bytes()[:300])
    by_file = {Path(r["skipped"][0]["file"]).name: r for r in engine([empty, cut])}
    assert by_file["empty.dcm"]["skipped"][0]["reason"] == "empty file (0 bytes)"
    assert by_file["cut.dcm"]["skipped"][0]["reason"].startswith("truncated file (300 bytes)")
    assert all("not a DICOM file" not in r["error"] for r in by_file.values())
