"""Tests of the manifest readers, ReportDataset (plain, cached, persistent) and ReportCollate."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, MapTransform
from PIL import Image
from torch.utils.data import DataLoader

from monai_r2gen.data.datasets import ReportCollate, ReportDataset, read_manifest
from monai_r2gen.data.reports import IGNORE_INDEX, TokenizeReportd
from monai_r2gen.errors import ManifestError, ModelConfigError, RadiographReadError
from tests.data.test_tokenizer import make_tokenizer

K = 3  # visual prompt tokens
SIZE = 8  # side of the test images

IU_REPORT = "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear."
MIMIC_RAW = (
    "                                 FINAL REPORT\n INDICATION:  ___M with cough.\n\n"
    " FINDINGS:\n\n Mild cardiomegaly.  No pleural effusion or\n pneumothorax.\n\n"
    " IMPRESSION:\n\n 1. No acute cardiopulmonary process.\n"
)
MIMIC_NO_FINDINGS = " FINAL REPORT\n HISTORY:  Fever.\n\n IMPRESSION:  No pneumonia.\n"


class LoadPngViewsd(MapTransform):
    """A minimal view loader for these tests: list of PNG paths -> (V, 1, H, W) float tensor in [0, 1]."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            views = []
            for path in d[key]:
                try:
                    with Image.open(path) as img:
                        views.append(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)
                except OSError as exc:
                    raise RadiographReadError(path, f"not a readable image ({type(exc).__name__})") from None
            d[key] = torch.from_numpy(np.stack(views))[:, None]
        return d


def _png(path: Path, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((SIZE, SIZE), value, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture()
def iu_dir(tmp_path: Path) -> Path:
    """An IU-Xray style folder: annotation.json + images/<study>/{0,1}.png (2 views per study)."""
    ann: dict[str, list] = {"train": [], "val": [], "test": []}
    for i, split in enumerate(["train", "train", "train", "val", "test"]):
        study = f"CXR{100 + i}_IM-{2000 + i}"
        for view in (0, 1):
            _png(tmp_path / "images" / study / f"{view}.png", 40 * i + 10 * view)
        ann[split].append({"id": study, "report": f"{IU_REPORT} Finding {i}.",
                           "image_path": [f"{study}/0.png", f"{study}/1.png"], "split": split})  # fmt: skip
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    return tmp_path


def _dataset(iu_dir: Path, tokenizer, **kwargs) -> ReportDataset:
    transform = Compose([LoadPngViewsd("image"), TokenizeReportd(tokenizer=tokenizer, num_image_tokens=K,
                                                                 max_length=256)])  # fmt: skip
    return ReportDataset(iu_dir / "annotation.json", image_root=iu_dir / "images", transform=transform, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# manifest readers
# ----------------------------------------------------------------------------------------------------------------


def test_read_iu_xray_annotation(iu_dir: Path):
    items = read_manifest(iu_dir / "annotation.json", image_root=iu_dir / "images")
    assert [item["split"] for item in items] == ["train", "train", "train", "val", "test"]
    first = items[0]
    assert first["id"] == "CXR100_IM-2000"
    assert first["image"] == [str(iu_dir / "images" / "CXR100_IM-2000" / "0.png"),
                              str(iu_dir / "images" / "CXR100_IM-2000" / "1.png")]  # fmt: skip
    assert first["report"] == f"{IU_REPORT} Finding 0."
    val = read_manifest(iu_dir / "annotation.json", split="val", image_root=iu_dir / "images")
    assert [item["id"] for item in val] == ["CXR103_IM-2003"]
    # default image root: the manifest's folder
    assert read_manifest(iu_dir / "annotation.json")[0]["image"][0] == str(iu_dir / "CXR100_IM-2000" / "0.png")


def test_read_mimic_annotation_groups_views_into_studies(tmp_path: Path):
    # R2Gen's MIMIC-CXR annotation: one entry per image, with study_id / subject_id
    entry = {"study_id": 50414267, "subject_id": 10000032, "report": "Lungs are clear.", "split": "train"}
    ann = {
        "train": [
            {**entry, "id": "02aa804e", "image_path": ["p10/p10000032/s50414267/02aa804e.jpg"]},
            {**entry, "id": "174413ec", "image_path": ["p10/p10000032/s50414267/174413ec.jpg"]},
            {"id": "2a2277a9", "study_id": 53189527, "subject_id": 10000032, "report": "No effusion.",
             "image_path": ["p10/p10000032/s53189527/2a2277a9.jpg"]},
        ],
        "test": [{"id": "68b5c4b1", "study_id": 50000001, "subject_id": 10000099, "report": "Normal.",
                  "image_path": ["p10/p10000099/s50000001/68b5c4b1.jpg", "p10/p10000099/s50000001/aa.jpg"]}],
    }  # fmt: skip
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    items = read_manifest(tmp_path / "annotation.json", image_root="/data/mimic")
    assert [item["id"] for item in items] == ["50414267", "53189527", "50000001"]
    assert items[0]["image"] == ["/data/mimic/p10/p10000032/s50414267/02aa804e.jpg",
                                 "/data/mimic/p10/p10000032/s50414267/174413ec.jpg"]  # fmt: skip
    assert items[0]["source_ids"] == ["02aa804e", "174413ec"]
    assert items[0]["report"] == "Lungs are clear."
    # R2GenGPT style (one entry per study with a list of views) stays one item
    assert len(items[2]["image"]) == 2 and items[2]["split"] == "test"
    # items read before are accepted by ReportDataset as they are (grouping twice changes nothing)
    again = ReportDataset(items, check_files=False)
    assert [(i["id"], i["source_ids"], i["image"]) for i in again.data] == [
        (i["id"], i["source_ids"], i["image"]) for i in items
    ]
    ungrouped = read_manifest(tmp_path / "annotation.json", image_root="/data/mimic", group_studies=False)
    assert [item["id"] for item in ungrouped] == ["02aa804e", "174413ec", "2a2277a9", "68b5c4b1"]


def test_read_jsonl_and_csv_manifests(tmp_path: Path):
    rows = [
        {"id": "a", "image_paths": ["a/pa.png", "a/lat.png"], "report": "Lungs are clear.", "split": "train"},
        {"id": "b", "image_paths": "b/pa.dcm", "report": "Small effusion.", "split": "test", "site": "x"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "m.csv").write_text(
        "id,image_paths,report,split,site\na,a/pa.png; a/lat.png,Lungs are clear.,train,\n"
        'b,/abs/b/pa.dcm,"Small effusion, left.",test,x\n'
    )
    jsonl = read_manifest(tmp_path / "m.jsonl")
    assert jsonl[0]["image"] == [str(tmp_path / "a" / "pa.png"), str(tmp_path / "a" / "lat.png")]
    assert jsonl[1]["image"] == [str(tmp_path / "b" / "pa.dcm")]
    assert jsonl[1]["site"] == "x" and "image_paths" not in jsonl[1]
    csv_items = read_manifest(tmp_path / "m.csv", split="test")
    assert len(csv_items) == 1
    assert csv_items[0]["image"] == ["/abs/b/pa.dcm"]  # absolute paths are kept
    assert csv_items[0]["report"] == "Small effusion, left."
    assert csv_items[0]["site"] == "x"
    assert read_manifest(tmp_path / "m.csv")[0]["image"] == jsonl[0]["image"]


def test_csv_multiline_reports_and_relative_image_root(tmp_path: Path, monkeypatch):
    (tmp_path / "m.csv").write_text(
        "id,image_paths,report,split\n"
        's1,pa.png,"FINDINGS:\n Lungs are clear.\n\n IMPRESSION:\n Normal.",train\n'
        's2,pa2.png,"Line one,\nline two \u2028 with a line separator.",train\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    items = read_manifest(tmp_path / "m.csv", image_root="images")
    assert [item["id"] for item in items] == ["s1", "s2"]
    assert items[0]["report"] == "FINDINGS:\n Lungs are clear.\n\n IMPRESSION:\n Normal."
    assert items[1]["report"] == "Line one,\nline two \u2028 with a line separator."
    assert items[0]["image"] == [str(tmp_path / "images" / "pa.png")]  # absolute even for a relative root
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image_paths": ["a.png"], "report": "x\u2028y"},
                                                 ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip
    assert read_manifest(tmp_path / "m.jsonl")[0]["report"] == "x\u2028y"


def test_manifest_without_reports_for_inference(tmp_path: Path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image_paths": ["a.png"]}) + "\n")
    item = read_manifest(tmp_path / "m.jsonl")[0]
    assert "report" not in item and item["split"] == ""
    (tmp_path / "m.csv").write_text("id,image_paths,report\na,a.png,\nb,b.png,  \n")
    assert all("report" not in item for item in read_manifest(tmp_path / "m.csv"))


def test_studies_without_a_report_are_dropped_from_a_training_manifest(tmp_path: Path):
    for name in ("a", "b"):
        _png(tmp_path / f"{name}.png", 100)
    (tmp_path / "m.csv").write_text("id,image_paths,report\na,a.png,Lungs are clear.\nb,b.png,\n")
    ds = ReportDataset(tmp_path / "m.csv")
    assert [item["id"] for item in ds] == ["a"]
    assert ds.skipped == [("b", str(tmp_path / "m.csv"), "no report")]
    (tmp_path / "inference.csv").write_text("id,image_paths\na,a.png\nb,b.png\n")
    assert len(ReportDataset(tmp_path / "inference.csv")) == 2


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("annotation.json", '{"train": [{"id": "a", "image_path": ["a.png"]},]}', "invalid JSON at line 1"),
        ("annotation.json", '{"train": {"id": "a"}}', "R2Gen annotation"),
        ("annotation.json", '{"train": [{"id": "a", "report": "x"}]}', "'train' entry 0: no image path field"),
        ("annotation.json", '{"train": [{"id": "a", "image_path": []}]}', "non-empty path"),
        ("annotation.json", '{"train": [{"image_path": ["a.png"]}]}', "no 'id'"),
        ("annotation.json", '{"train": [{"id": "a", "image_path": "a.png", "report": 3}]}', "'report' must be"),
        ("annotation.json", '{"train": [["a.png"]]}', "expected an object"),
        ("annotation.json", "[]", "no entries"),
        ("m.jsonl", '{"id": "a", "image_paths": ["a.png"]}\n{"id": "b", "image_paths": [\n', "line 2: invalid JSON"),
        ("m.csv", "id,report\na,x\n", "no image path column"),
        ("m.csv", "image_paths,report\na.png,x\n", "no 'id' column"),
        ("m.csv", "id,image_paths,report\na,a.png,x,extra\n", "line 2: more fields"),
        ("m.csv", "id,image_paths,report\na,a.png\n", "line 2: fewer fields"),
        ("m.csv", "", "empty CSV"),
        ("m.txt", "a.png", "unknown manifest type"),
    ],
)
def test_malformed_manifests_name_the_file(tmp_path: Path, name: str, content: str, reason: str):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value)


def test_missing_manifest_bad_encoding_and_missing_split(tmp_path: Path, iu_dir: Path):
    with pytest.raises(ManifestError, match="file not found"):
        read_manifest(tmp_path / "nope.json")
    (tmp_path / "latin.csv").write_bytes("id,image_paths,report\na,a.png,d\xe9j\xe0 vu\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(tmp_path / "latin.csv")
    present = r"no entries of split 'validate'; splits present: \['test', 'train', 'val'\]"
    with pytest.raises(ManifestError, match=present):
        read_manifest(iu_dir / "annotation.json", split="validate")


# ----------------------------------------------------------------------------------------------------------------
# ReportDataset
# ----------------------------------------------------------------------------------------------------------------


def test_report_style_and_target_applied_at_read_time(tmp_path: Path):
    for name in ("a", "b"):
        _png(tmp_path / f"{name}.png", 100)
    items = [{"id": "s1", "image": ["a.png"], "report": MIMIC_RAW, "split": "train"},
             {"id": "s2", "image": ["b.png"], "report": MIMIC_NO_FINDINGS, "split": "train"}]  # fmt: skip
    findings = ReportDataset(items, image_root=tmp_path, report_style="mimic_cxr", target="findings")
    assert len(findings) == 1  # s2 has no findings section
    assert findings[0]["report"] == "mild cardiomegaly . no pleural effusion or pneumothorax ."
    assert findings[0]["report_target"] == "findings" == findings.target_name
    assert findings.skipped == [("s2", "<items>", "empty report after selecting 'findings'")]
    both = ReportDataset(items, image_root=tmp_path, report_style="mimic_cxr", target="findings+impression")
    assert [item["report"] for item in both] == [
        "mild cardiomegaly . no pleural effusion or pneumothorax . no acute cardiopulmonary process .",
        "no pneumonia .",
    ]
    raw = ReportDataset(items, image_root=tmp_path)
    assert raw.target_name == "full" and raw[0]["report"] == " ".join(MIMIC_RAW.split())
    kept = ReportDataset(items, image_root=tmp_path, target="findings", drop_empty_reports=False)
    assert [item["report"] for item in kept] == ["Mild cardiomegaly. No pleural effusion or pneumothorax.", ""]


def test_missing_image_raise_or_skip(iu_dir: Path, tokenizer, caplog):
    missing = iu_dir / "images" / "CXR101_IM-2001" / "1.png"
    missing.unlink()
    with pytest.raises(RadiographReadError) as info:
        _dataset(iu_dir, tokenizer)
    assert info.value.path == str(missing)
    with caplog.at_level(logging.WARNING, logger="monai_r2gen.data.datasets"):
        ds = _dataset(iu_dir, tokenizer, on_error="skip")
    assert len(ds) == 4 and ds.num_skipped == 1
    assert ds.skipped == [("CXR101_IM-2001", str(missing), "file not found")]
    assert str(missing) in caplog.text and "file not found" in caplog.text


@pytest.mark.parametrize("cache", ["none", "cache", "persistent"])
def test_dataset_under_monai_caches_with_dataloader(iu_dir: Path, tokenizer, tmp_path: Path, cache: str):
    kwargs = {"cache_dir": tmp_path / "persistent"} if cache == "persistent" else {}
    ds = _dataset(iu_dir, tokenizer, split="train", cache=cache, **kwargs)
    assert len(ds) == 3
    pad_id = tokenizer.pad_token_id
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=ReportCollate(pad_id), num_workers=0)
    batches = list(loader)
    assert [len(b["id"]) for b in batches] == [2, 1]
    batch = batches[0]
    assert batch["image"].shape == (2, 2, 1, SIZE, SIZE)
    assert batch["view_mask"].dtype == torch.bool and bool(batch["view_mask"].all())
    assert torch.allclose(batch["image"][1, 1], torch.full((1, SIZE, SIZE), 50 / 255))  # study 1, view 1
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["id"] == ["CXR100_IM-2000", "CXR101_IM-2001"]
    lengths = batch["attention_mask"].sum(1)
    for row in range(2):
        n = int(lengths[row])
        assert int(batch["input_ids"][row, n - 1]) == tokenizer.eos_token_id
        assert bool((batch["labels"][row, n:] == IGNORE_INDEX).all())
        assert bool((batch["input_ids"][row, n:] == pad_id).all())
    if cache == "persistent":
        cached = sorted((tmp_path / "persistent").glob("*.pt"))
        assert len(cached) == 3
        again = _dataset(iu_dir, tokenizer, split="train", cache=cache, **kwargs)
        assert torch.equal(again[1]["input_ids"], ds[1]["input_ids"])
        assert sorted((tmp_path / "persistent").glob("*.pt")) == cached


@pytest.mark.parametrize("cache", ["none", "cache", "persistent"])
def test_unreadable_image_is_skipped_and_dropped_by_the_collate(iu_dir: Path, tokenizer, tmp_path: Path, cache: str):
    corrupt = iu_dir / "images" / "CXR101_IM-2001" / "0.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    kwargs = {"cache_dir": tmp_path / "persistent"} if cache == "persistent" else {}
    with pytest.raises(RadiographReadError) as info:  # the typed error, not MONAI's RuntimeError wrapper
        _dataset(iu_dir, tokenizer, split="train", cache=cache, **kwargs)[1]
    assert info.value.path == str(corrupt)
    ds = _dataset(iu_dir, tokenizer, split="train", cache=cache, on_error="skip", **kwargs)
    assert ds[1] is None and ds[0] is not None
    ((study, path, reason),) = ds.skipped
    assert (study, path) == ("CXR101_IM-2001", str(corrupt)) and reason.startswith("not a readable image")
    ds[1]  # a second failure of the same study is not counted twice
    assert ds.num_skipped == 1
    loader = DataLoader(ds, batch_size=3, collate_fn=ReportCollate(tokenizer.pad_token_id))
    (batch,) = list(loader)
    assert batch["id"] == ["CXR100_IM-2000", "CXR102_IM-2002"]
    assert batch["image"].shape[0] == batch["input_ids"].shape[0] == 2


def test_dataset_is_picklable_for_worker_processes(iu_dir: Path, tokenizer):
    ds = _dataset(iu_dir, tokenizer, split="train")
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2]["input_ids"], ds[2]["input_ids"])


def test_dataset_option_errors(iu_dir: Path):
    ann = iu_dir / "annotation.json"
    with pytest.raises(ModelConfigError, match="on_error"):
        ReportDataset(ann, on_error="ignore")
    with pytest.raises(ModelConfigError, match="cache_dir"):
        ReportDataset(ann, cache="persistent")
    with pytest.raises(ModelConfigError, match="cache must be"):
        ReportDataset(ann, cache="memory")
    with pytest.raises(ModelConfigError, match="target"):
        ReportDataset(ann, target="history")


# ----------------------------------------------------------------------------------------------------------------
# ReportCollate
# ----------------------------------------------------------------------------------------------------------------


def _item(n_tokens: int, n_prompt: int, n_views: int, name: str) -> dict:
    ids = torch.arange(10, 10 + n_tokens)
    labels = ids.clone()
    labels[:n_prompt] = IGNORE_INDEX
    return {"id": name, "report": f"report {name}", "input_ids": ids, "attention_mask": torch.ones(n_tokens,
            dtype=torch.long), "labels": labels, "prompt_ids": ids[:n_prompt].clone(),
            "image": torch.rand(n_views, 1, 4, 4), "view_mask": torch.ones(n_views, dtype=torch.bool)}  # fmt: skip


def test_collate_right_padding_for_training():
    a, b = _item(6, 3, 2, "a"), _item(4, 2, 1, "b")
    batch = ReportCollate(pad_token_id=0, padding_side="right")([a, None, b])
    assert batch["id"] == ["a", "b"] and batch["report"] == ["report a", "report b"]
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 14, 15], [10, 11, 12, 13, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 13, 14, 15], [-100, -100, 12, 13, -100, -100]]
    # generation prompts are always left padded
    assert batch["prompt_ids"].tolist() == [[10, 11, 12], [0, 10, 11]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    # views: padded to the batch maximum with zeros and a False mask
    assert batch["image"].shape == (2, 2, 1, 4, 4)
    assert batch["view_mask"].tolist() == [[True, True], [True, False]]
    assert torch.equal(batch["image"][1, 0], b["image"][0]) and bool((batch["image"][1, 1] == 0).all())


def test_collate_left_padding_and_defaults():
    a, b = _item(5, 2, 1, "a"), _item(3, 1, 1, "b")
    for item in (a, b):
        del item["attention_mask"], item["view_mask"]
        item["image"] = item["image"][0]  # (C, H, W): one view
        item["weight"] = torch.tensor(1.0)
    batch = ReportCollate(pad_token_id=7, padding_side="left")([a, b])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 14], [7, 7, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [0, 0, 1, 1, 1]]  # from the lengths, not the pad id
    assert batch["labels"].tolist() == [[-100, -100, 12, 13, 14], [-100, -100, -100, 11, 12]]
    assert batch["image"].shape == (2, 1, 1, 4, 4) and batch["view_mask"].tolist() == [[True], [True]]
    assert batch["weight"].shape == (2,)


def test_collate_edge_cases():
    collate = ReportCollate(pad_token_id=0)
    assert collate([None, None]) == {}
    with pytest.raises(ModelConfigError, match="differ"):
        collate([{"image": torch.zeros(1, 1, 4, 4)}, {"image": torch.zeros(1, 1, 8, 8)}])
    with pytest.raises(ModelConfigError, match="padding_side"):
        ReportCollate(pad_token_id=0, padding_side="center")
    with pytest.raises(ModelConfigError, match="pad token"):
        ReportCollate(pad_token_id=None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# the real view loader
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["none", "persistent"])
def test_real_load_study_views_pipeline(iu_dir: Path, tokenizer, tmp_path: Path, cache: str):
    from monai_r2gen.data.transforms import LoadStudyViewsd

    corrupt = iu_dir / "images" / "CXR102_IM-2002" / "1.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    transform = Compose([
        LoadStudyViewsd("image", spatial_size=SIZE, max_views=3, accept_nonstandard=True),
        TokenizeReportd(tokenizer=tokenizer, num_image_tokens=K, max_length=256),
    ])  # fmt: skip
    kwargs = {"cache_dir": tmp_path / "persistent"} if cache == "persistent" else {}
    ds = ReportDataset(iu_dir / "annotation.json", split="train", image_root=iu_dir / "images", transform=transform,
                       on_error="skip", report_style="iu_xray", cache=cache, **kwargs)  # fmt: skip
    loader = DataLoader(ds, batch_size=3, collate_fn=ReportCollate(tokenizer.pad_token_id))
    (batch,) = list(loader)
    assert batch["id"] == ["CXR100_IM-2000", "CXR101_IM-2001"]  # CXR102 has an unreadable view
    ((study, path, _),) = ds.skipped
    assert (study, path) == ("CXR102_IM-2002", str(corrupt))
    # (B, max_views, 1, S, S); the third view slot is empty and masked
    assert batch["image"].shape == (2, 3, 1, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["view_mask"].tolist() == [[True, True, False], [True, True, False]]
    assert bool((batch["image"][:, 2] == 0).all())
    assert batch["report"][0] == (
        "the heart is normal in size . the mediastinum is unremarkable . the lungs are clear . finding 0 ."
    )
    n_prompt = batch["prompt_ids"].shape[1]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert batch["input_ids"][:, :n_prompt].eq(image_id).sum(1).tolist() == [K, K]
    assert batch["labels"][:, :n_prompt].eq(IGNORE_INDEX).all()
