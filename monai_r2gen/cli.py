"""The ``monai-r2gen`` command.

Subcommands:
    synth        write the synthetic chest-radiograph dataset (the embedded default data)
    check-data   load every study of an annotation file / manifest through the data pipeline and count problems
    train        run the bundle's ``training`` (or another run id) with ``key=value`` overrides
    generate     write one report per study (JSON lines) for DICOM / PNG / JPEG files, study folders and manifests
    evaluate     score predicted reports against references (NLG + clinical efficacy)
    analyze      soft-prompt, attention and ablation analyses (:mod:`monai_r2gen.analysis.cli`)
    pacs         report on the CR / DX studies of a DICOMweb PACS and store the reports back as DICOM SR

Library code logs; this module (with ``analysis.cli``) is the one place that prints for people. Heavy modules
(torch, MONAI, transformers) are imported by the handlers only, so ``monai-r2gen --help`` stays fast.

A user error never prints a traceback: typed errors (:class:`~monai_r2gen.errors.R2GenError`, also when MONAI's
config evaluator wraps one) and file errors (missing, unreadable, a folder) print ``error: <path>: <reason>`` and
exit with status 2; a bundle config that MONAI cannot resolve or instantiate is reported with the config file and
the key; Ctrl-C prints one line saying what was written and exits with 130. ``--debug`` shows the traceback instead.
Outputs are checked before any work and written to a temporary file that replaces the target once complete
(:mod:`monai_r2gen.files`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["main", "build_parser"]

DEFAULT_TRAIN_CONFIG = os.path.join("bundle", "configs", "train.yaml")
_QUIET_LOGGERS = ("monai_r2gen.data.studies", "monai_r2gen.inference")  # `generate` prints their warnings itself
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C
SYNTH_FORMATS = ("png", "dcm")


class _Interrupted(KeyboardInterrupt):
    """A Ctrl-C that a handler has turned into a one-line account of what was (not) written."""


def _shown(path: str | os.PathLike) -> str:
    """A path as a person typed it: relative to the working folder when it lies inside it."""
    text = os.fspath(path)
    relative = os.path.relpath(text) if os.path.isabs(text) else text
    return text if relative.startswith(os.pardir) else relative


def _studies(count: int) -> str:
    return f"{count} stud{'y' if count == 1 else 'ies'}"


# ----------------------------------------------------------------------------------------------------------------
# argument types: impossible numbers are argparse errors naming the option
# ----------------------------------------------------------------------------------------------------------------


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        value = _whole_number(text)
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _positive_int(text: str) -> int:
    return _int_in(1)(text)


def _non_negative_int(text: str) -> int:
    return _int_in(0)(text)


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _synth_formats(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated image formats of ``synth``."""
    formats = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()))
    formats = tuple("dcm" if f == "dicom" else f for f in formats)
    unknown = [f for f in formats if f not in SYNTH_FORMATS]
    if not formats or unknown:
        raise argparse.ArgumentTypeError(
            f"give one or more of {', '.join(SYNTH_FORMATS)} (comma-separated), got {text!r}"
        )
    return formats


def _override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value): a Python literal when it parses as one (as ``python -m monai.bundle run``
    reads its options), else the text itself (``$`` expressions, ``@`` references and ``%`` macros included)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"overrides are key=value (e.g. stage0#max_iterations=10), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


# ----------------------------------------------------------------------------------------------------------------
# synth, check-data, evaluate
# ----------------------------------------------------------------------------------------------------------------


def _check_dataset_folder(out: str, overwrite: bool) -> None:
    """Refuse a ``synth --out`` that is a file, lies under a file, or already holds a data set (unless replaced)."""
    from monai_r2gen.files import OutputFileError, check_output_path

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise OutputFileError(folder, "is a file; give a folder for the data set")
    if (folder / "annotation.json").exists() and not overwrite:
        raise OutputFileError(
            folder, "already holds a data set (annotation.json); give another folder or pass --overwrite to replace it"
        )
    check_output_path(folder / "annotation.json")  # its folder can be made and written


def _cmd_synth(args: argparse.Namespace) -> int:
    from monai_r2gen.data.synthetic import generate_dataset

    _check_dataset_folder(args.out, args.overwrite)
    start = time.perf_counter()
    summary = generate_dataset(
        args.out,
        n_studies=args.n,
        seed=args.seed,
        image_size=args.image_size,
        lateral_fraction=args.lateral_fraction,
        workers=args.workers,
        formats=args.formats,
        progress=True,
    )
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n} synthetic studies to {args.out} in {elapsed:.1f} s")
    if isinstance(summary, dict):
        for key, value in summary.items():
            if isinstance(value, (str, int, float)):
                print(f"  {key:<24} {value}")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from monai_r2gen.data.datasets import ReportDataset
    from monai_r2gen.data.transforms import LoadStudyViewsd

    splits = [args.split] if args.split else ["train", "val", "test"]
    transform = LoadStudyViewsd(keys="image", spatial_size=args.spatial_size, max_views=args.max_views)
    print(f"{'split':<8} {'studies':>8} {'loaded':>8} {'skipped':>8} {'views':>6}")
    problems = 0
    for split in splits:
        dataset = ReportDataset(
            args.manifest, split=split, image_root=args.image_root, transform=transform, on_error="skip"
        )
        loaded = views = 0
        for index in range(len(dataset)):
            item = dataset[index]
            if item is None:
                continue
            loaded += 1
            views += int(item["view_mask"].sum())
        skipped = len(dataset.skipped)
        problems += skipped
        print(f"{split:<8} {loaded + skipped:>8} {loaded:>8} {skipped:>8} {views:>6}")
        for study_id, path, reason in dataset.skipped[: args.show]:
            print(f"    skipped {study_id}: {path}: {reason}")
    return 1 if problems and args.strict else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from monai_r2gen.evaluation import evaluate_files, format_score_table
    from monai_r2gen.files import check_output_path

    if args.output:  # before the scores are computed: a bad path must not cost them
        inputs = (args.predictions, args.references, args.findings, args.chexbert_checkpoint)
        check_output_path(args.output, [p for p in inputs if p], overwrite=args.overwrite)
    scores = evaluate_files(
        args.predictions,
        args.references,
        split=args.split,
        output=args.output,
        uncertain=args.uncertain,
        tokenize=args.tokenize,
        clean_style=args.clean_style,
        chexbert_checkpoint=args.chexbert_checkpoint,
        chexbert_tokenizer=args.chexbert_tokenizer,
        radgraph_dir=args.radgraph_dir,
        findings=args.findings,
        ceiling=args.ceiling,
        nlg_metrics=args.nlg_metrics.split(",") if args.nlg_metrics else None,
        bootstrap=args.bootstrap,
        seed=args.seed,
        compare=args.compare,
        timeout=args.scorer_timeout,
    )
    print(format_score_table(scores))
    if args.output:
        print(f"scores and settings written to {args.output}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# train: monai.bundle.run, with config errors named by file and key
# ----------------------------------------------------------------------------------------------------------------

_INSTANTIATE_FAILED = re.compile(r"Failed to instantiate component '([^']+)'")
_MONAI_WRAPPERS = ("Failed to instantiate component", "Failed to evaluate")
_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '([^']+)'")
_UNKNOWN_NAMES = re.compile(r"unknown[^\[;]*\[([^\]]*)\]")
_REFERENCE = re.compile(r"`(@[^`]+)`")
_QUOTED = re.compile(r"'([^']+)'")


class _BundleConfigs:
    """The bundle config files of a ``train`` run, read once to name the file (or override) a bad key came from.

    Args:
        paths: the config files, in merge order.
        overrides: the command-line ``key=value`` overrides.

    Raises:
        InputFileError: a file that is not a readable JSON / YAML mapping of config ids.
    """

    def __init__(self, paths: Sequence[str], overrides: Mapping[str, Any]) -> None:
        from monai.bundle import ConfigParser

        from monai_r2gen.errors import InputFileError

        self.paths = list(paths)
        self.overrides = dict(overrides)
        self.entries: list[tuple[str, str, Any]] = []  # (source, id, value), source: a file or "override"
        for path in self.paths:
            try:
                content = ConfigParser.load_config_file(path)
            except Exception as exc:  # YAML / JSON syntax, duplicate keys, unknown suffix
                raise InputFileError(path, f"not a readable bundle config: {_first_line(exc)}") from exc
            if not isinstance(content, dict):
                raise InputFileError(path, "a bundle config is a mapping of ids; this file holds none")
            for key, value in content.items():
                self._flatten(path, str(key).replace("::", "#"), value)
        for key, value in self.overrides.items():
            self._flatten("override", key.replace("::", "#"), value)
        self.merged: dict[str, Any] = ConfigParser.load_config_files(self.paths)

    def _flatten(self, source: str, key: str, value: Any) -> None:
        self.entries.append((source, key, value))
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for child, item in children:
            self._flatten(source, f"{key}#{child}", item)

    @property
    def shown(self) -> str:
        """The config files, as typed."""
        return ", ".join(_shown(p) for p in self.paths)

    def run_ids(self) -> list[str]:
        """Top-level ids holding a list of ``$`` expressions or ``@`` references (what ``monai.bundle run`` runs)."""

        def runnable(value: Any) -> bool:
            return isinstance(value, list) and bool(value) and all(str(v).startswith(("$", "@")) for v in value)

        return [key for key, value in self.merged.items() if runnable(value)]

    def describe(self, source: str, key: str) -> str:
        """How a person finds an entry: ``override key=value`` or ``file (key)``."""
        if source == "override":
            return f"override {key}={_literal(self.overrides.get(key, ''))}"
        return f"{_shown(source)} ({key})"

    def origins(self, name: str) -> list[str]:
        """Where a setting called ``name`` (the last part of its id) is set."""
        return [self.describe(s, k) for s, k, _ in self.entries if k.rsplit("#", 1)[-1] == name]

    def users_of(self, text: str) -> list[str]:
        """Where a value holding ``text`` (e.g. a reference ``@name``) is set."""
        return [self.describe(s, k) for s, k, v in self.entries if isinstance(v, str) and text in v]

    def component_ids(self, target: str) -> list[str]:
        """Ids of the components built from ``target``."""
        ids = {k.rsplit("#", 1)[0] for _, k, v in self.entries if k.endswith("_target_") and v == target}
        return sorted(i for i in ids if i != "_target_")

    def home(self, component_id: str | None) -> str:
        """The config file defining a component (all files when unknown)."""
        for source, key, _ in reversed(self.entries):
            if source != "override" and component_id and key == f"{component_id}#_target_":
                return _shown(source)
        return self.shown

    def override_problem(self) -> str | None:
        """Why an override cannot be applied to the configs (its section is missing, a list or a value)."""
        import copy

        config = copy.deepcopy(self.merged)
        for key, value in self.overrides.items():
            parts = key.replace("::", "#").split("#")
            node: Any = config
            for depth, part in enumerate(parts):
                here = "#".join(parts[:depth])
                last = depth == len(parts) - 1
                if isinstance(node, dict):
                    if last:
                        node[part] = value
                    elif part not in node:
                        return f"override {key}={_literal(value)}: no '{'#'.join(parts[: depth + 1])}' in the config"
                    else:
                        node = node[part]
                elif isinstance(node, list):
                    if not part.isdigit() or int(part) >= len(node):
                        span = f"give an index 0..{len(node) - 1}" if node else "it is empty"
                        items = f"{len(node)} item{'' if len(node) == 1 else 's'}"
                        return f"override {key}={_literal(value)}: '{here}' is a list of {items}; {span}"
                    if last:
                        node[int(part)] = value
                    else:
                        node = node[int(part)]
                else:
                    kind = type(node).__name__
                    return f"override {key}={_literal(value)}: '{here}' is a value ({kind}), not a section"
        return None

    def explain(self, exc: BaseException) -> tuple[str, str] | None:
        """``(file, reason)`` for a failure of ``monai.bundle.run`` that comes from the configs, else None."""
        problem = self.override_problem()
        if problem is not None:
            return self.shown, problem
        for error in _exception_chain(exc):
            match = _INSTANTIATE_FAILED.search(str(error))
            if match and error.__cause__ is not None:
                return self._instantiate_failure(match.group(1), error.__cause__)
            if str(error).startswith(_MONAI_WRAPPERS):
                continue
            if _raised_in_monai_bundle(error):
                used = [u for ref in _REFERENCE.findall(str(error)) for u in self.users_of(ref)]
                return self.shown, _first_line(error) + (f" (in {'; '.join(used)})" if used else "")
            return None
        return None

    def _instantiate_failure(self, target: str, cause: BaseException) -> tuple[str, str]:
        ids = self.component_ids(target)
        name = target.rsplit(".", 1)[-1]
        component = f"{ids[0]} ({name})" if ids else name
        home = self.home(ids[0] if ids else None)
        unexpected = _UNEXPECTED_KEYWORD.search(str(cause))
        if isinstance(cause, TypeError) and unexpected:
            key = unexpected.group(1)
            settings = _parameters(target)
            takes = f" (its settings: {', '.join(settings)})" if settings else ""
            for source, entry, _ in reversed(self.entries):
                if any(entry == f"{i}#{key}" for i in ids) or (not ids and entry.endswith(f"#{key}")):
                    if source == "override":
                        return home, f"{self.describe(source, entry)}: {component} has no setting '{key}'{takes}"
                    return _shown(source), f"{entry}: {name} has no setting '{key}'{takes}"
            return home, f"{component} has no setting '{key}'{takes}"
        names = [n.strip(" '\"") for found in _UNKNOWN_NAMES.findall(str(cause)) for n in found.split(",")]
        origins = [o for n in names if n for o in self.origins(n)]
        quoted = set(_QUOTED.findall(str(cause)))  # a wrongly typed value the message quotes, e.g. int('abc')
        origins += [
            self.describe(s, k)
            for s, k, v in self.entries
            if isinstance(v, str) and v in quoted and any(k.startswith(f"{i}#") for i in ids)
        ]
        where = f" (set in {'; '.join(origins)})" if origins else ""
        return home, f"{component} cannot be built: {type(cause).__name__}: {_first_line(cause)}{where}"


def _literal(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _parameters(target: str) -> list[str]:
    """The keyword settings a ``_target_`` takes (empty when it cannot be inspected)."""
    import inspect
    import pydoc

    try:
        signature = inspect.signature(pydoc.locate(target))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.name != "self"]


def _raised_in_monai_bundle(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by MONAI's config machinery (parsing, references), not by a component."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return "/monai/bundle/" in tb.tb_frame.f_code.co_filename.replace(os.sep, "/")


def _cmd_train(args: argparse.Namespace) -> int:
    """``train``: ``monai.bundle.run(run_id, config_file=..., meta_file=..., logging_file=..., **overrides)``."""
    from monai.bundle import run

    from monai_r2gen.errors import InputFileError, R2GenError

    configs = [os.path.abspath(c) for c in (args.config or [DEFAULT_TRAIN_CONFIG])]
    missing = [c for c in configs if not os.path.isfile(c)]
    if missing:
        print(f"error: config file not found: {', '.join(missing)} (give --config)", file=sys.stderr)
        return EXIT_USER_ERROR
    config_dir = Path(configs[0]).parent
    bundle_root = args.bundle_root or str(config_dir.parent if config_dir.name == "configs" else Path.cwd())
    beside = {"meta_file": config_dir / "metadata.json", "logging_file": config_dir / "logging.conf"}
    files = {key: getattr(args, key) or (str(path) if path.is_file() else None) for key, path in beside.items()}
    watching = {k: getattr(args, k) for k in ("tracking", "tracking_uri", "progress") if getattr(args, k) is not None}
    overrides = {"bundle_root": os.path.abspath(bundle_root), **dict(args.overrides), **watching}
    bundle = _BundleConfigs(configs, {**dict(args.overrides), **watching})
    if args.run_id not in bundle.merged and args.run_id not in overrides:
        raise InputFileError(bundle.shown, f"no run id '{args.run_id}' (run ids: {', '.join(bundle.run_ids())})")
    print(
        f"monai.bundle run {args.run_id}: {', '.join(configs)} (bundle root {overrides['bundle_root']})",
        file=sys.stderr,
    )
    start = time.perf_counter()
    try:
        run(args.run_id, config_file=configs if len(configs) > 1 else configs[0], **files, **overrides)
    except Exception as exc:
        if any(isinstance(e, R2GenError) for e in _exception_chain(exc)):
            raise  # ours, surfaced by main
        explained = bundle.explain(exc)
        if explained is None:
            raise
        raise InputFileError(*explained) from exc
    print(f"{args.run_id} finished in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output_stream(output: Path | None) -> Iterator[IO[str]]:
    """Standard output, or a temporary file that replaces ``output`` only once every line is written."""
    if output is None:
        yield sys.stdout
        return
    from monai_r2gen.files import atomic_output

    with atomic_output(output) as handle:
        yield handle


@contextlib.contextmanager
def _quiet_loggers(verbose: bool) -> Iterator[None]:
    """Silence the per-file warnings that ``generate`` prints itself (unless ``--verbose``)."""
    quiet = [] if verbose else [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def _study_files(studies: Sequence[Any]) -> list[str]:
    """Every file the studies read or skipped (images inside input folders and listed by manifests)."""
    return [path for study in studies for path in (*study.paths, *(p for p, _ in study.errors))]


def _cmd_generate(args: argparse.Namespace) -> int:
    """``generate``: JSON lines of :class:`~monai_r2gen.inference.ReportInference` results, a summary on stderr."""
    from monai_r2gen.errors import ModelConfigError
    from monai_r2gen.files import check_output_path
    from monai_r2gen.inference import ReportInference

    output = check_output_path(args.output, args.inputs, overwrite=args.overwrite) if args.output else None
    existed = output is not None and output.exists()
    if not (Path(args.model_dir) / "generator.json").is_file():
        raise ModelConfigError(f"{args.model_dir}: not a report generator directory (no generator.json)")
    overrides = {"num_beams": args.beam, "max_new_tokens": args.max_new_tokens}
    generation = {key: value for key, value in overrides.items() if value is not None}
    engine = ReportInference(
        args.model_dir,
        encoder_path=args.encoder_path,
        llm_path=args.llm_path,
        device=args.device,
        batch_size=args.batch_size,
        on_error="skip",
        accept_nonstandard=args.accept_nonstandard,
    )
    studies: list[Any] | None = None
    count = reports = files_skipped = 0
    start = time.perf_counter()
    try:
        studies = engine.studies(args.inputs)
        if output is not None:  # an image inside an input folder or listed by a manifest is an input too
            check_output_path(output, _study_files(studies), overwrite=args.overwrite)
        with _quiet_loggers(args.verbose), _output_stream(output) as out:
            for result in engine.iter_results(studies, generation=generation):
                out.write(json.dumps(result, ensure_ascii=False) + "\n")
                out.flush()
                count += 1
                if "report" in result:
                    reports += 1
                    for problem in result["skipped"]:
                        files_skipped += 1
                        print(f"skipped {problem['file']}: {problem['reason']}", file=sys.stderr)
                else:
                    files_skipped += len(result["skipped"])
                    print(f"failed  {result['id']}: {result['error']}", file=sys.stderr)
    except KeyboardInterrupt:
        done = f"{count} of {_studies(len(studies))}" if studies is not None else _studies(count)
        if output is None:
            raise _Interrupted(f"interrupted after {done}; the lines on standard output are incomplete") from None
        kept = "left as it was" if existed else "not written"
        raise _Interrupted(f"interrupted after {done}; {args.output} {kept} (no partial file)") from None
    elapsed = time.perf_counter() - start
    load = f"model load {engine.load_seconds:.1f} s" if engine.load_seconds is not None else "model not loaded"
    rows = [
        ("studies", count),
        ("reports", reports),
        ("failed", count - reports),
        ("files skipped", files_skipped),
        ("seconds", f"{elapsed:.1f} ({load})"),
    ]
    if args.output:
        rows.append(("output", args.output))
    print("\n".join(f"{name:<14}{value}" for name, value in rows), file=sys.stderr)
    return 0 if reports else 1


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``monai-r2gen`` command."""
    parser = argparse.ArgumentParser(prog="monai-r2gen", description="Chest X-ray report generation for MONAI.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of a one-line message"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write the synthetic chest-radiograph dataset")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--n", type=_positive_int, default=2000, help="number of studies")
    synth.add_argument("--seed", type=_non_negative_int, default=0)
    synth.add_argument("--image-size", type=_int_in(64, 2048), default=256, help="image side in pixels (64..2048)")
    synth.add_argument(
        "--lateral-fraction", type=_fraction, default=0.4, help="share of studies with a lateral view (0..1)"
    )
    synth.add_argument(
        "--formats", type=_synth_formats, default=SYNTH_FORMATS, help="comma-separated image formats: png, dcm"
    )
    synth.add_argument("--workers", type=_non_negative_int, default=0, help="processes (0: all cores)")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace the data set already in --out (refused otherwise)"
    )
    synth.set_defaults(func=_cmd_synth)

    check = sub.add_parser("check-data", help="load every study of a manifest and report unreadable items")
    check.add_argument("manifest", help="annotation.json, JSONL or CSV manifest")
    check.add_argument("--split", default=None, help="one split (default: train, val and test)")
    check.add_argument("--image-root", default=None)
    check.add_argument("--spatial-size", type=_positive_int, default=224, help="view side in pixels")
    check.add_argument("--max-views", type=_positive_int, default=2, help="views per study")
    check.add_argument("--show", type=_non_negative_int, default=10, help="how many skipped items to list per split")
    check.add_argument("--strict", action="store_true", help="exit with status 1 when any item was skipped")
    check.set_defaults(func=_cmd_check_data)

    train = sub.add_parser(
        "train",
        help="train with the bundle (monai.bundle run training)",
        description="Run a bundle run id (default: training) with monai.bundle.run.",
    )
    train.add_argument(
        "--config",
        action="append",
        default=None,
        help=f"bundle config file; repeat to merge several (default: {DEFAULT_TRAIN_CONFIG})",
    )
    train.add_argument(
        "--bundle-root", default=None, help="folder for data/, runs/ and models/ (default: the folder holding configs/)"
    )
    train.add_argument("--run-id", default="training", help="run id (e.g. train_stage1)")
    train.add_argument("--meta-file", default=None, help="default: metadata.json beside the config")
    train.add_argument("--logging-file", default=None, help="default: logging.conf beside the config")
    train.add_argument(
        "--tracking",
        choices=["none", "mlflow"],
        default=None,
        help='record the run in MLflow (pip install "monai-r2gen[tracking]")',
    )
    train.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store: a folder (SQLite inside), sqlite:/// or http(s):// (default: <output_dir>/mlruns)",
    )
    train.add_argument(
        "--progress",
        choices=["auto", "bar", "log", "off"],
        default=None,
        help="per-stage progress (auto: a bar on a terminal, a few log lines elsewhere)",
    )
    train.add_argument(
        "overrides",
        nargs="*",
        type=_override,
        metavar="key=value",
        help="config overrides, e.g. device=cpu stage0#max_iterations=10",
    )
    train.set_defaults(func=_cmd_train)

    generate = sub.add_parser(
        "generate",
        help="write reports (JSON lines) for images, study folders and manifests",
        description="One JSON line per study: id, Study Instance UID, views used (frontal "
        "first), report or error, skipped files, generation settings, model name and "
        "fingerprint, seconds. The output file is checked before any work and appears only once "
        "complete. Exit status 0 when at least one report was written, 1 when none was, 2 on an "
        "error (named on stderr), 130 when interrupted.",
    )
    generate.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained / training")
    generate.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="DICOM files or study folders, PNG / JPEG / TIFF files, annotation.json / JSONL / CSV",
    )
    generate.add_argument(
        "--output",
        default=None,
        help="JSONL file, written when complete (default: standard output); an existing file needs --overwrite",
    )
    generate.add_argument("--overwrite", action="store_true", help="replace an existing --output once the run succeeds")
    generate.add_argument("--batch-size", type=_positive_int, default=8, help="studies generated together")
    generate.add_argument("--beam", type=_positive_int, default=None, help="beam size (default: the model's)")
    generate.add_argument(
        "--max-new-tokens", type=_positive_int, default=None, help="longest report in tokens (default: the model's)"
    )
    generate.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    generate.add_argument("--encoder-path", default=None, help="base encoder, when the model refers to one")
    generate.add_argument("--llm-path", default=None, help="base LLM, when the model refers to one")
    generate.add_argument(
        "--accept-nonstandard",
        action="store_true",
        help="also write reports for images that are not chest radiographs (modality, body part, colour, size); "
        "each is logged",
    )
    generate.set_defaults(func=_cmd_generate)

    evaluate = sub.add_parser("evaluate", help="score predicted reports (NLG + clinical efficacy)")
    evaluate.add_argument("--predictions", required=True, help="JSONL with 'id' and 'report' per line")
    evaluate.add_argument("--references", required=True, help="annotation.json or manifest")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument(
        "--output",
        default=None,
        help="write every score and the settings as JSON here (checked before scoring; an existing file needs "
        "--overwrite)",
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --output once scored")
    evaluate.add_argument(
        "--uncertain", default="negative", choices=["positive", "negative", "ignore"], help="CE uncertain-label mapping"
    )
    evaluate.add_argument("--tokenize", default="simple", choices=["simple", "ptb", "none"], help="NLG tokenization")
    evaluate.add_argument("--clean-style", default="mimic_cxr", choices=["iu_xray", "mimic_cxr", "none"])
    evaluate.add_argument("--chexbert-checkpoint", default=None, help="local chexbert.pth (optional CheXbert F1)")
    evaluate.add_argument("--chexbert-tokenizer", default=None, help="local BERT tokenizer folder for CheXbert")
    evaluate.add_argument("--radgraph-dir", default=None, help="local RadGraph model folder (optional RadGraph F1)")
    evaluate.add_argument(
        "--nlg-metrics", default=None, help="comma-separated subset of BLEU,METEOR,ROUGE-L,CIDEr (default: all)"
    )
    evaluate.add_argument(
        "--findings",
        default=None,
        help="findings.json (or {study_id: [{kind, side, severity}]}): adds finding side / severity accuracy",
    )
    evaluate.add_argument(
        "--bootstrap",
        type=_non_negative_int,
        default=1000,
        help="bootstrap draws of the 95%% intervals of every score (0: none)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    evaluate.add_argument(
        "--compare",
        default=None,
        metavar="OTHER.jsonl",
        help="second predictions file: paired bootstrap interval of the difference and permutation p-value per score",
    )
    evaluate.add_argument(
        "--scorer-timeout", type=float, default=None, help="seconds per Java scorer run (default: scaled with size)"
    )
    evaluate.add_argument(
        "--ceiling",
        action="store_true",
        help="with --findings (a phantom findings.json): add the paraphrase ceiling and BLEU-4 / ceiling",
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    from monai_r2gen.analysis.cli import add_analyze_parser  # argparse only: no heavy import

    add_analyze_parser(sub)

    from monai_r2gen.pacs.cli import register_parser as add_pacs_parser  # argparse only: no heavy import

    add_pacs_parser(sub)
    return parser


def _exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, then its ``__cause__`` / ``__context__``, and so on (each once)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None else None if exc.__suppress_context__ else exc.__context__


def _user_error(exc: BaseException) -> str | None:
    """The one-line message of a user error: a typed error anywhere in the chain (MONAI's config evaluator wraps
    ours), else an error on a named file (missing, unreadable, a folder); None for anything else (a bug)."""
    from monai_r2gen.errors import R2GenError

    chain = list(_exception_chain(exc))
    for error in chain:
        if isinstance(error, R2GenError):
            return str(error)
    for error in chain:
        if isinstance(error, OSError) and error.filename is not None:
            reason = error.strerror or str(error)
            other = f" -> {error.filename2}" if error.filename2 is not None else ""
            return f"{os.fsdecode(error.filename)}{other}: {reason}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monai-r2gen`` console script.

    Returns:
        0 on success, 1 when a command found problems (e.g. no report written), 2 on a user error (message on
        stderr, no traceback), 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        print(str(exc) if isinstance(exc, _Interrupted) else "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = None if args.debug else _user_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
