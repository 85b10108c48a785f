"""``monai-r2gen pacs``: report on the radiograph studies of a DICOMweb server and store the SRs back.

::

    monai-r2gen pacs --url http://127.0.0.1:8042/dicom-web --model MODEL_DIR [--study UID ...]

Without ``--study`` every study with a CR or DX series (``--modality``) is reported on, optionally within
``--study-date``. One JSON line per study goes to standard output (or ``--output``): its Study Instance UID, the
status (stored / written / skipped / failed), the report, the SR's UIDs and the seconds it took; a summary goes to
standard error. A study that already holds a report SR of this package is skipped unless ``--again``.

Authentication: ``--user NAME`` with the password in ``$R2GEN_PACS_PASSWORD`` (HTTP basic), or ``--token-env VAR``
naming an environment variable that holds a bearer token; ``--ca-bundle`` for a private TLS CA.

This module imports only ``argparse`` at import time, so that registering the subcommand keeps ``monai-r2gen
--help`` fast; ``python -m monai_r2gen.pacs`` runs it on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["add_arguments", "build_parser", "cmd_pacs", "main", "register_parser"]

PASSWORD_ENV = "R2GEN_PACS_PASSWORD"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``pacs`` to ``parser``; returns it."""
    parser.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="folder written by save_pretrained")
    parser.add_argument(
        "--study", nargs="+", action="extend", default=[], metavar="UID", help="Study Instance UIDs (default: all)"
    )
    parser.add_argument(
        "--modality", nargs="+", default=["CR", "DX"], help="modalities of the series used (default: CR DX)"
    )
    parser.add_argument("--study-date", default=None, help="only studies of this date or range (YYYYMMDD[-YYYYMMDD])")
    parser.add_argument("--limit", type=_positive_int, default=None, help="at most this many studies")
    parser.add_argument("--again", action="store_true", help="write a new SR even where the study holds one")
    parser.add_argument("--dry-run", action="store_true", help="store nothing in the PACS (needs --sr-dir)")
    parser.add_argument("--sr-dir", default=None, help="also write each SR to this folder as <SOP Instance UID>.dcm")
    parser.add_argument("--output", default=None, help="JSON lines file of the outcomes (default: standard output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output once the run succeeds")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--beam", type=_positive_int, default=None, help="beam size (default: the model's)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=None, help="report length limit in tokens")
    parser.add_argument("--encoder-path", default=None, help="base encoder, when the model refers to one")
    parser.add_argument("--llm-path", default=None, help="base LLM, when the model refers to one")
    parser.add_argument(
        "--accept-nonstandard", action="store_true", help="report on images that are not chest radiographs too"
    )
    parser.add_argument("--timeout", type=_seconds, default=120.0, help="seconds to wait for each server answer")
    parser.add_argument("--user", default=None, help=f"HTTP basic user (password in ${PASSWORD_ENV})")
    parser.add_argument("--token-env", default=None, metavar="VAR", help="environment variable holding a bearer token")
    parser.add_argument("--ca-bundle", default=None, help="CA certificates to verify the server's TLS certificate")
    parser.set_defaults(func=cmd_pacs)
    return parser


def register_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``pacs`` subcommand to the CLI's subparsers; returns its parser."""
    parser = subparsers.add_parser(
        "pacs",
        help="report on the studies of a DICOMweb PACS and store the reports back as DICOM SR",
        description="Query a DICOMweb server for CR / DX studies (QIDO-RS), retrieve them (WADO-RS), write a report "
        "per study and store it in the same study as a DICOM Basic Text SR (STOW-RS).",
    )
    return add_arguments(parser)


def _client(args: argparse.Namespace) -> Any:
    from monai_r2gen.errors import PacsError
    from monai_r2gen.pacs.dicomweb import DicomWebClient

    auth = headers = None
    if args.user:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            raise PacsError(args.url, f"--user given but ${PASSWORD_ENV} is not set")
        auth = (args.user, password)
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise PacsError(args.url, f"--token-env {args.token_env}: the variable is not set")
        headers = {"Authorization": f"Bearer {token}"}
    return DicomWebClient(args.url, timeout=args.timeout, auth=auth, headers=headers,
                          verify=args.ca_bundle or True)  # fmt: skip


def cmd_pacs(args: argparse.Namespace) -> int:
    """The ``pacs`` handler: one JSON line per study, a summary on standard error.

    Returns:
        0 when no study failed, 1 otherwise.
    """
    from monai_r2gen.errors import ModelConfigError
    from monai_r2gen.files import atomic_output, check_output_path
    from monai_r2gen.inference import ReportInference
    from monai_r2gen.pacs.roundtrip import PacsReporter

    if args.dry_run and not args.sr_dir:
        raise ModelConfigError("--dry-run stores nothing: give --sr-dir to keep the SRs")
    if not os.path.isfile(os.path.join(args.model, "generator.json")):
        raise ModelConfigError(f"{args.model}: not a report generator directory (no generator.json)")
    output = check_output_path(args.output, overwrite=args.overwrite) if args.output else None
    overrides = {"num_beams": args.beam, "max_new_tokens": args.max_new_tokens}
    engine = ReportInference(
        args.model,
        encoder_path=args.encoder_path,
        llm_path=args.llm_path,
        device=args.device,
        batch_size=1,
        generation={k: v for k, v in overrides.items() if v is not None},
        on_error="skip",
        accept_nonstandard=args.accept_nonstandard,
    )
    counts = dict.fromkeys(("stored", "written", "skipped", "failed"), 0)
    start = time.perf_counter()
    with _client(args) as client:
        reporter = PacsReporter(client, engine, modalities=args.modality, again=args.again, store=not args.dry_run,
                                sr_dir=args.sr_dir)  # fmt: skip
        with atomic_output(output) if output is not None else contextlib.nullcontext(sys.stdout) as out:
            for outcome in reporter.run(args.study, args.study_date, args.limit):
                out.write(json.dumps(outcome.as_dict(), ensure_ascii=False) + "\n")
                out.flush()
                counts[outcome.status] += 1
                line = f"{outcome.status:<8}{outcome.study_instance_uid}"
                print(f"{line}: {outcome.reason}" if outcome.reason else line, file=sys.stderr)
    load = f"model load {engine.load_seconds:.1f} s" if engine.load_seconds is not None else "model not loaded"
    rows = [*counts.items(), ("seconds", f"{time.perf_counter() - start:.1f} ({load})")]
    print("\n".join(f"{name:<10}{value}" for name, value in rows), file=sys.stderr)
    return 1 if counts["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m monai_r2gen.pacs`` (the same options as ``monai-r2gen pacs``)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_r2gen.pacs", description="Report on the studies of a DICOMweb PACS; store the SRs back."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m monai_r2gen.pacs``: 0 success, 1 a study failed, 2 user error, 130 interrupted."""
    from monai_r2gen.errors import R2GenError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except R2GenError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
