"""The PACS round trip: find radiograph studies over DICOMweb, write their reports, store the reports back as SRs.

For each study, :class:`PacsReporter`

1. lists the study's series (QIDO-RS) and skips the study when it already holds a report SR of this package
   (Series Description :data:`~monai_r2gen.data.report_sr.SR_SERIES_DESCRIPTION`), unless asked to write again;
2. retrieves its CR / DX series (WADO-RS) into a private temporary folder, removed afterwards;
3. gathers the views (:func:`~monai_r2gen.data.studies.collect_studies`, frontal first) and writes the report with
   :class:`~monai_r2gen.inference.ReportInference`, the code path of ``monai-r2gen generate``;
4. builds the Basic Text SR (:func:`~monai_r2gen.data.report_sr.build_report_sr`) in the same study, referencing the
   views, and stores it (STOW-RS); optionally also writes it to a local folder.

Logs and results name studies by Study Instance UID only; patient names and IDs are never logged.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monai_r2gen.data.report_sr import (
    SR_SERIES_DESCRIPTION,
    build_report_sr,
    dataset_bytes,
    model_identity,
    read_sources,
    views_in_order,
    write_report_sr,
)
from monai_r2gen.errors import PacsError, R2GenError
from monai_r2gen.pacs.dicomweb import DicomWebClient, json_value, uids_of

__all__ = ["DEFAULT_MODALITIES", "PacsReporter", "StudyOutcome"]

logger = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("CR", "DX")
"""Modalities of the series a report is written from."""

STATUSES = ("stored", "written", "skipped", "failed")


@dataclass
class StudyOutcome:
    """What happened to one study.

    Attributes:
        study_instance_uid: the study.
        status: "stored" (SR stored in the PACS), "written" (SR written locally only, ``store=False``), "skipped"
            (already reported, or nothing to report on) or "failed".
        reason: why it was skipped or failed (no patient identifiers).
        report: the generated report.
        sr_sop_instance_uid: the SR's SOP Instance UID.
        sr_series_instance_uid: the SR's Series Instance UID.
        sr_file: the local SR file, when one was written.
        views: SOP Instance UIDs of the views the report was written from (frontal first).
        model: the model identity (name, version, fingerprint, uid).
        seconds: time spent on the study (retrieval, generation, storage).
    """

    study_instance_uid: str
    status: str
    reason: str | None = None
    report: str | None = None
    sr_sop_instance_uid: str | None = None
    sr_series_instance_uid: str | None = None
    sr_file: str | None = None
    views: list[str] = field(default_factory=list)
    model: dict[str, str] | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class PacsReporter:
    """Writes report SRs for the radiograph studies of a DICOMweb server.

    Args:
        client: the server.
        engine: a :class:`~monai_r2gen.inference.ReportInference` (any object with its ``__call__``); loaded on the
            first study that has views.
        modalities: modalities of the series used (other series, SRs included, are not retrieved).
        again: write a new SR even when the study already holds one of this package.
        store: STOW the SR back (False: only write it to ``sr_dir``).
        sr_dir: a folder to write each SR to as well (``<SR SOP Instance UID>.dcm``), or None.
        creator: the manufacturer named for the model (Contributing Equipment, device observer).
        work_dir: where the temporary study folders are made (default: the system's temporary folder).
    """

    def __init__(
        self,
        client: DicomWebClient,
        engine: Any,
        *,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        again: bool = False,
        store: bool = True,
        sr_dir: str | os.PathLike | None = None,
        creator: str = "monai-r2gen",
        work_dir: str | os.PathLike | None = None,
    ) -> None:
        if not store and sr_dir is None:
            raise ValueError("with store=False give sr_dir, or the SRs would go nowhere")
        self.client = client
        self.engine = engine
        self.modalities = tuple(m.upper() for m in modalities)
        self.again = bool(again)
        self.store = bool(store)
        self.sr_dir = Path(sr_dir) if sr_dir is not None else None
        self.creator = creator
        self.work_dir = os.fspath(work_dir) if work_dir is not None else None

    # ------------------------------------------------------------------------------------------------------------
    # finding studies
    # ------------------------------------------------------------------------------------------------------------

    def find_studies(
        self, study_uids: Iterable[str] = (), study_date: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Study Instance UIDs to report on: those given that the server holds (in order; a missing one is kept, and
        fails with its reason later), else every study with a series of one of the modalities (QIDO-RS
        ``ModalitiesInStudy``), optionally within ``study_date`` (``YYYYMMDD`` or a range ``YYYYMMDD-YYYYMMDD``)."""
        given = list(dict.fromkeys(study_uids))
        if given:
            return given
        found: list[str] = []
        for modality in self.modalities:
            filters = {"ModalitiesInStudy": modality}
            if study_date:
                filters["StudyDate"] = study_date
            for uid in uids_of(self.client.search_studies(filters, limit=limit), "StudyInstanceUID"):
                if uid not in found:
                    found.append(uid)
        if limit is not None:
            found = found[: int(limit)]
        logger.info("%d studies with %s series on %s", len(found), "/".join(self.modalities), self.client.url)
        return found

    # ------------------------------------------------------------------------------------------------------------
    # one study
    # ------------------------------------------------------------------------------------------------------------

    def _series(self, study_uid: str) -> tuple[list[dict[str, Any]], list[str], bool]:
        """The study's series, the UIDs of its radiograph series, and whether it already holds a report SR of this
        package."""
        matches = self.client.search_series(study_uid, {"includefield": ["Modality", "SeriesDescription"]})
        reported = any(
            str(json_value(m, "Modality") or "").upper() == "SR"
            and str(json_value(m, "SeriesDescription") or "") == SR_SERIES_DESCRIPTION
            for m in matches
        )
        images = [m for m in matches if str(json_value(m, "Modality") or "").upper() in self.modalities]
        return matches, uids_of(images, "SeriesInstanceUID"), reported

    def _retrieve(self, study_uid: str, series_uids: Sequence[str], folder: Path) -> int:
        """Write the instances of the series into ``folder`` (files named by position, never by a sent value)."""
        count = 0
        for index, series_uid in enumerate(series_uids, start=1):
            for number, content in enumerate(self.client.retrieve_series(study_uid, series_uid), start=1):
                (folder / f"s{index:03d}-{number:05d}.dcm").write_bytes(content)
                count += 1
        return count

    def report_study(self, study_uid: str) -> StudyOutcome:
        """Retrieve one study, write its report and store (or write) its SR.

        Server errors of this study, unusable images and generation errors give a "failed" outcome with the reason;
        an unreachable server raises :class:`~monai_r2gen.errors.PacsError` (nothing else would work either).
        """
        start = time.perf_counter()
        try:
            outcome = self._report_study(study_uid)
        except PacsError as exc:
            if exc.status is None:
                raise
            outcome = StudyOutcome(study_uid, "failed", reason=str(exc))
        except R2GenError as exc:
            outcome = StudyOutcome(study_uid, "failed", reason=str(exc))
        outcome.seconds = round(time.perf_counter() - start, 3)
        level = logging.WARNING if outcome.status == "failed" else logging.INFO
        logger.log(level, "study %s: %s%s (%.1f s)", study_uid, outcome.status,
                   f": {outcome.reason}" if outcome.reason else "", outcome.seconds)  # fmt: skip
        return outcome

    def _report_study(self, study_uid: str) -> StudyOutcome:
        from monai_r2gen.data.studies import collect_studies

        matches, series_uids, reported = self._series(study_uid)
        if not matches:
            return StudyOutcome(study_uid, "failed", reason=f"no such study on {self.client.url}")
        if reported and not self.again:
            return StudyOutcome(study_uid, "skipped", reason="already holds a report SR (write again with --again)")
        if not series_uids:
            return StudyOutcome(study_uid, "skipped", reason=f"no {'/'.join(self.modalities)} series in this study")
        with tempfile.TemporaryDirectory(prefix="monai-r2gen-pacs-", dir=self.work_dir) as tmp:
            folder = Path(tmp)
            count = self._retrieve(study_uid, series_uids, folder)
            logger.info("study %s: %d instance(s) of %d series retrieved", study_uid, count, len(series_uids))
            studies = [s for s in collect_studies([folder], on_error="skip") if s.study_instance_uid == study_uid]
            usable = [s for s in studies if s.ok]
            if not usable:
                reasons = "; ".join(f"{os.path.basename(p)}: {r}" for s in studies for p, r in s.errors)
                return StudyOutcome(study_uid, "failed", reason=f"no usable radiograph ({reasons or 'none retrieved'})")
            study = usable[0]
            (result,) = self.engine([study])
            if "report" not in result:
                return StudyOutcome(study_uid, "failed", reason=str(result.get("error") or "no report written"))
            source, evidence = read_sources(study.paths)
            views = views_in_order(evidence, result.get("views") or study.paths)
        model = {**model_identity(result, self.engine.model_dir), "creator": self.creator}
        ds = build_report_sr(str(result["report"]), model, evidence, views, source=source)
        outcome = StudyOutcome(study_uid, "stored" if self.store else "written", report=str(result["report"]),
                               sr_sop_instance_uid=str(ds.SOPInstanceUID),
                               sr_series_instance_uid=str(ds.SeriesInstanceUID),
                               views=[v.sop_instance_uid for v in views], model=model)  # fmt: skip
        if self.sr_dir is not None:
            outcome.sr_file = str(write_report_sr(ds, self.sr_dir / f"{ds.SOPInstanceUID}.dcm"))
        if self.store:
            self.client.store_instances([dataset_bytes(ds)], study_uid)
        return outcome

    def run(
        self, study_uids: Iterable[str] = (), study_date: str | None = None, limit: int | None = None
    ) -> Iterator[StudyOutcome]:
        """:meth:`find_studies`, then :meth:`report_study` for each; yields the outcomes as they come."""
        for uid in self.find_studies(study_uids, study_date, limit):
            yield self.report_study(uid)
