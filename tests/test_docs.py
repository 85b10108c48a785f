"""The user documentation: the site builds strictly, and every command and snippet in it is checked.

- ``mkdocs build --strict`` fails on broken links, missing pages and pages left out of the navigation.
- ``bash`` blocks: ``monai-r2gen`` commands are parsed with ``monai_r2gen.cli.build_parser()`` (synopsis lines with
  ``[--option]`` or ``...`` are skipped); ``python -m monai.bundle run`` commands (also under ``torchrun``) must name
  existing config files and run ids, and their overrides existing keys; ``python benchmarks/<x>.py`` commands are
  parsed by the script's ``build_parser()``; ``python -m monai_r2gen...`` modules and repository paths named by
  other commands must exist. Installation (``pip``) and test (``pytest``) commands are the README's, run in CI.
- ``python`` blocks must compile and every name they import from ``monai_r2gen`` must exist; the MIMIC-CXR
  conversion snippet is executed on a small fake MIMIC-CXR-JPG tree.
"""

from __future__ import annotations

import ast
import csv
import gzip
import importlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
_BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_REPO_DIRS = ("monai_r2gen/", "bundle/", "scripts/", "benchmarks/", "docs/", "tests/")
_BUNDLE_CLI_KEYS = {"config_file", "meta_file", "logging_file", "args_file"}


def _blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for lang, body in _BLOCK.findall(page.read_text(encoding="utf-8")):
            if lang == language:
                found.append((page.name, body))
    return found


def _commands(body: str) -> list[list[str]]:
    """Shell commands of a bash block: continuation lines joined, comments dropped, split at ``&&``, ``;``, ``|``."""
    text = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)  # comments start at a '#' after whitespace ('a#b' is an override)
        tokens = shlex.split(line)
        current: list[str] = []
        for token in tokens:
            if token in ("&&", ";", "|", "||"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


BASH_COMMANDS = [(page, cmd) for page, body in _blocks("bash") for cmd in _commands(body)]
PYTHON_BLOCKS = _blocks("python")


def test_docs_have_commands_and_snippets():
    assert len(PAGES) >= 8, [p.name for p in PAGES]
    assert sum(1 for _, cmd in BASH_COMMANDS if cmd[0] == "monai-r2gen") >= 10
    assert len(PYTHON_BLOCKS) >= 4


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]' (or pip install mkdocs)")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir",
         str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nav_pages = {p.stem for p in PAGES}
    built = {p.parent.name for p in (tmp_path / "site").rglob("index.html")}
    assert nav_pages - {"index"} <= built


# ----------------------------------------------------------------------------------------------------------------
# bash commands
# ----------------------------------------------------------------------------------------------------------------


def _check_cli(tokens: list[str]) -> None:
    from monai_r2gen.cli import build_parser

    if any("..." in t or t.startswith("[") for t in tokens):
        return  # a synopsis, not a command
    try:
        build_parser().parse_args(tokens[1:])
    except SystemExit as exc:
        pytest.fail(f"`{shlex.join(tokens)}` does not parse with monai_r2gen.cli.build_parser() (exit {exc.code})")


def _config_node(config: object, path: list[str]) -> object:
    node = config
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise KeyError("#".join(path))
    return node


def _check_override(config: dict, key: str, tokens: list[str]) -> None:
    from monai_r2gen.engines.stage_settings import DEFAULT_STAGE_SETTINGS
    from monai_r2gen.networks.generator_config import GeneratorConfig

    parts = key.split("#")
    try:
        parent = _config_node(config, parts[:-1])
    except KeyError:
        pytest.fail(f"`{shlex.join(tokens)}`: override {key!r} names no existing config section")
    leaf = parts[-1]
    if isinstance(parent, dict) and leaf in parent:
        return
    allowed: set[str] = set()
    if len(parts) == 2 and parts[0].startswith("stage"):
        allowed = set(DEFAULT_STAGE_SETTINGS)
    elif len(parts) == 2 and parts[0] == "network_config":
        allowed = set(GeneratorConfig.__dataclass_fields__)
    assert leaf in allowed, f"`{shlex.join(tokens)}`: override {key!r} is not a key of the bundle config"


def _check_bundle(tokens: list[str]) -> None:
    from monai.bundle import ConfigParser

    assert tokens[:2] == ["monai.bundle", "run"], f"unexpected bundle command {shlex.join(tokens)}"
    run_id = tokens[2]
    options: dict[str, str] = {}
    rest = tokens[3:]
    assert len(rest) % 2 == 0, f"`{shlex.join(tokens)}`: options must come as --key value pairs"
    for flag, value in zip(rest[::2], rest[1::2]):
        assert flag.startswith("--"), f"`{shlex.join(tokens)}`: {flag!r} is not an option"
        options[flag[2:]] = value
    files = options["config_file"]
    files = ast.literal_eval(files) if files.startswith("[") else [files]
    for name in files:
        assert (ROOT / name).is_file(), f"`{shlex.join(tokens)}`: config file {name} not found"
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) for f in files])
    config = parser.get()
    assert run_id in config, f"`{shlex.join(tokens)}`: no run id {run_id!r} in {files}"
    if "bundle_root" in options:
        assert (ROOT / options["bundle_root"]).is_dir()
    for key in options:
        if key not in _BUNDLE_CLI_KEYS:
            _check_override(config, key, tokens)


def _check_benchmark(tokens: list[str]) -> None:
    script = ROOT / tokens[0]
    assert script.is_file(), f"{tokens[0]} not found"
    spec = importlib.util.spec_from_file_location(f"_doc_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.build_parser().parse_args(tokens[1:])
    except SystemExit as exc:
        pytest.fail(f"`python {shlex.join(tokens)}` does not parse with the script's parser (exit {exc.code})")


def _check_repo_paths(tokens: list[str]) -> None:
    for token in tokens:
        path = token.split("=", 1)[-1]
        if path.startswith(_REPO_DIRS) and "*" not in path:
            assert (ROOT / path).exists(), f"`{shlex.join(tokens)}`: {path} does not exist in the repository"


def _check_python(tokens: list[str]) -> None:
    if tokens[1:2] == ["-m"]:
        module = tokens[2]
        if module == "pytest":
            return
        if module == "monai.bundle":
            _check_bundle(tokens[2:])
        elif module.startswith("monai_r2gen"):
            assert importlib.util.find_spec(module.split(".")[0]) is not None
            base = ROOT / Path(*module.split("."))
            assert base.with_suffix(".py").is_file() or (base / "__main__.py").is_file(), f"no module {module}"
        _check_repo_paths(tokens)
    elif tokens[1].startswith("benchmarks/"):
        _check_benchmark(tokens[1:])
    else:
        _check_repo_paths(tokens)


@pytest.mark.parametrize(("page", "tokens"), BASH_COMMANDS, ids=[f"{p}:{' '.join(c)[:60]}" for p, c in BASH_COMMANDS])
def test_bash_command(page, tokens):
    program = tokens[0]
    name = program.rsplit("/", 1)[-1]
    if program == "monai-r2gen":
        _check_cli(tokens)
    elif name in ("python", "python3"):
        _check_python(tokens)
    elif program == "torchrun":
        assert "-m" in tokens, "torchrun commands run a module"
        _check_python(["python", *tokens[tokens.index("-m") :]])
    elif name == "pip":
        return  # installation: the README's commands, run in CI
    else:
        _check_repo_paths(tokens)


# ----------------------------------------------------------------------------------------------------------------
# python snippets
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("page", "code"), PYTHON_BLOCKS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(PYTHON_BLOCKS)])
def test_python_snippet_compiles_and_imports_exist(page, code):
    tree = ast.parse(code, filename=page)
    compile(tree, page, "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("monai_r2gen"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{page}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("monai_r2gen"):
                    importlib.import_module(alias.name)


def _mimic_snippet() -> str:
    for _, code in PYTHON_BLOCKS:
        if code.startswith("# MIMIC-CXR(-JPG) -> JSONL manifest"):
            return code
    pytest.fail("the MIMIC-CXR conversion snippet is missing from docs/data-preparation.md")


def _write_gz_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    with gzip.open(path, "wt", newline="") as fh:
        fh.write(buffer.getvalue())


def test_mimic_snippet_writes_a_manifest_read_manifest_accepts(tmp_path, monkeypatch):
    from PIL import Image

    from monai_r2gen.data.datasets import read_manifest

    mimic, reports = tmp_path / "mimic-cxr-jpg", tmp_path / "reports"
    studies = {  # study -> (subject, split, views, report)
        "50000001": ("10000032", "train", [("d1", "PA"), ("d2", "LATERAL")],
                     "FINAL REPORT\n INDICATION: cough.\n FINDINGS: Small left pleural effusion.\n"
                     " IMPRESSION: Effusion."),
        "50000002": ("10000032", "validate", [("d3", "AP")], "IMPRESSION: No acute process."),  # no findings
        "50000003": ("11000099", "test", [("d4", "AP AXIAL"), ("d5", "AP")], "FINDINGS: Lungs are clear."),
    }  # fmt: skip
    split_rows, meta_rows = [], []
    for study, (subject, split, views, text) in studies.items():
        folder = Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        (mimic / folder).mkdir(parents=True)
        (reports / folder.parent).mkdir(parents=True, exist_ok=True)
        (reports / folder.parent / f"s{study}.txt").write_text(text)
        for dicom_id, view in views:
            Image.new("L", (32, 32), 128).save(mimic / folder / f"{dicom_id}.jpg")
            split_rows.append([dicom_id, study, subject, split])
            meta_rows.append([dicom_id, subject, study, view])
    _write_gz_csv(mimic / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _write_gz_csv(mimic / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
                  meta_rows)  # fmt: skip

    code = _mimic_snippet()
    code = re.sub(r'^MIMIC = Path\("[^"]+"\)', f"MIMIC = Path({str(mimic)!r})", code, flags=re.M)
    code = re.sub(r'^REPORTS = Path\("[^"]+"\)', f"REPORTS = Path({str(reports)!r})", code, flags=re.M)
    monkeypatch.chdir(tmp_path)
    with redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "data-preparation.md", "exec"), {"__name__": "__doc_snippet__"})
    assert "2 studies written" in out.getvalue()

    items = read_manifest(tmp_path / "mimic_cxr_findings.jsonl", image_root=mimic)
    by_id = {item["id"]: item for item in items}
    assert set(by_id) == {"50000001", "50000003"}  # grouped by study_id; the study without findings is dropped
    first = by_id["50000001"]
    assert first["report"] == "Small left pleural effusion." and first["split"] == "train"
    assert [Path(p).name for p in first["image"]] == ["d1.jpg", "d2.jpg"]
    assert all(Path(p).is_file() for p in first["image"])
    assert [Path(p).name for p in by_id["50000003"]["image"]] == ["d5.jpg"]  # AP AXIAL left out
