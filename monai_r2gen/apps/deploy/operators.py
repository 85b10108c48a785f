"""MONAI Deploy operators: report generation on selected radiograph series, and the DICOM Basic Text SR writer.

``ReportGenerationOperator`` loads the trained model once (on the first study) and writes reports through
:class:`monai_r2gen.inference.ReportInference`, the code path shared with the CLI, the bundle and MONAI Label.
``ReportSRWriterOperator`` is the SDK's :class:`DICOMTextSRWriterOperator` extended to one SR per study, with the
study's tags copied (via the SDK's ``write_common_modules``), the model named in the Contributing Equipment Sequence
and in the content tree (device observer), the views used referenced as evidence and from the report text, UTF-8 text,
and a JSON result beside the SR.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.operators.dicom_text_sr_writer_operator import DICOMTextSRWriterOperator
from monai.deploy.operators.dicom_utils import ModelInfo, save_dcm_file, write_common_modules
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from monai_r2gen.data.studies import Study, collect_studies

__all__ = [
    "BASIC_TEXT_SR",
    "ReportGenerationOperator",
    "ReportSRWriterOperator",
    "model_identity",
    "sr_text",
]

logger = logging.getLogger(__name__)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
_NOT_IN_BASIC_TEXT_SR = ("AcquisitionDateTime", "BodyPartExamined", "RequestedProcedureID")
# C0 controls other than TAB, LF, FF and CR are not allowed in DICOM text values (PS3.5 6.1.3)
_FORBIDDEN_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _content(relationship: str, value_type: str, concept: Dataset, **values: Any) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([concept])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def sr_text(report: str) -> str:
    """The report as a DICOM UT value: forbidden control characters removed (logged), nothing else changed."""
    cleaned = _FORBIDDEN_CONTROLS.sub("", report)
    if cleaned != report:
        logger.warning("removed %d control characters from the report text", len(report) - len(cleaned))
    return cleaned


def model_identity(result: Mapping[str, Any], model_path: str | Path) -> dict[str, str]:
    """Name, version and a stable Device UID of the model that wrote ``result``.

    The name and fingerprint come from the inference result's ``"model"`` entry when present, else from the model
    folder's name and :func:`monai_r2gen.networks.generator.fingerprint`; the UID is derived from the fingerprint
    (same model, same UID).
    """
    model = dict(result.get("model") or {})
    name = str(model.get("name") or Path(model_path).name or "monai-r2gen")
    fingerprint = str(model.get("fingerprint") or "")
    if not fingerprint:
        from monai_r2gen.networks.generator import fingerprint as compute_fingerprint

        fingerprint = compute_fingerprint(model_path)
    digest = fingerprint.split(":")[-1]
    return {"name": name[:64], "version": digest[:16], "fingerprint": fingerprint,
            "uid": generate_uid(prefix=None, entropy_srcs=[fingerprint])}  # fmt: skip


def _series_paths(selection: StudySelectedSeries) -> list[str]:
    paths = []
    for selected in selection.selected_series:
        for instance in selected.series.get_sop_instances():
            filename = getattr(instance.get_native_sop_instance(), "filename", None)
            if filename:
                paths.append(str(filename))
    return paths


class ReportGenerationOperator(Operator):
    """Writes one report per study from the selected CR / DX series.

    Named input:
        study_selected_series_list: list of ``StudySelectedSeries`` (from ``DICOMSeriesSelectorOperator``).

    Named output:
        results: list of dicts, one per study: ``study_instance_uid``, ``study_id``, ``views`` (frontal first),
        ``view_positions``, ``report``, ``findings`` (CheXpert-14), ``model``, ``seconds`` and what the inference
        result carries (generation settings ...).

    Args:
        fragment: the application.
        model_path: folder written by ``RadiologyReportGenerator.save_pretrained``.
        device: torch device (None: CUDA when available).
        generation: generation settings over the model's saved defaults.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        model_path: str | Path,
        device: str | None = None,
        generation: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.model_path = Path(model_path)
        self.device = device
        self.generation = dict(generation or {})
        self.input_name = "study_selected_series_list"
        self.output_name = "results"
        self._engine: Any = None
        self._labeler: Any = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name)
        spec.output(self.output_name)

    def _load(self) -> Any:
        if self._engine is None:
            from monai_r2gen.inference import ReportInference
            from monai_r2gen.metrics.chexpert import CheXpertLabeler

            start = time.perf_counter()
            self._engine = ReportInference(self.model_path, device=self.device, generation=self.generation,
                                           on_error="raise")  # fmt: skip
            _ = self._engine.network
            self._labeler = CheXpertLabeler()
            logger.info("report model loaded from %s in %.1f s", self.model_path, time.perf_counter() - start)
        return self._engine

    def studies(self, selections: Sequence[StudySelectedSeries]) -> list[tuple[StudySelectedSeries, Study]]:
        """The views of each selected study, ordered frontal first (non-images and unreadable files skipped)."""
        found = []
        for selection in selections:
            uid = selection.study.StudyInstanceUID
            paths = _series_paths(selection)
            usable = [s for s in collect_studies(paths, on_error="skip") if s.ok and s.study_instance_uid == uid]
            if not usable:
                logger.warning("study %s: no usable CR / DX image among %d files", uid, len(paths))
                continue
            found.append((selection, usable[0]))
        return found

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        selections = op_input.receive(self.input_name) or []
        studies = self.studies(selections)
        if not studies:
            raise ValueError("no CR / DX radiograph study found in the input")
        engine = self._load()
        results = []
        for _, study in studies:
            start = time.perf_counter()
            (result,) = engine([study])
            report = str(result["report"])
            record = {key: value for key, value in result.items() if key != "id"}
            record.update(
                {
                    "study_instance_uid": study.study_instance_uid,
                    "study_id": study.study_id,
                    "report": report,
                    "findings": self._labeler.label(report),
                    "model": model_identity(result, self.model_path),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            )
            results.append(record)
            logger.info("study %s: report of %d characters from %d views", study.study_id, len(report),
                        len(study.paths))  # fmt: skip
        op_output.emit(results, self.output_name)


class ReportSRWriterOperator(DICOMTextSRWriterOperator):
    """One DICOM Basic Text SR (+ a JSON result) per study report.

    Named inputs:
        results: list of result dicts from :class:`ReportGenerationOperator`.
        study_selected_series_list: the selected series (tags of the matching study are copied into its SR).

    File output:
        ``<SR SOP Instance UID>.dcm`` and ``<SR SOP Instance UID>.json`` per study in ``output_folder``.

    Args: as :class:`DICOMTextSRWriterOperator` (``output_folder``, ``model_info``, ``copy_tags``,
        ``equipment_info``, ``custom_tags``); ``model_info`` is completed per study from the result's model identity.
    """

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.input(self.input_name_dcm_series).condition(ConditionType.NONE)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results = op_input.receive("results") or []
        selections = op_input.receive(self.input_name_dcm_series) or []
        by_study = {s.study.StudyInstanceUID: s for s in selections if isinstance(s, StudySelectedSeries)}
        self.output_folder.mkdir(parents=True, exist_ok=True)
        for result in results:
            selection = by_study.get(result["study_instance_uid"])
            if selection is None or not selection.selected_series:
                raise ValueError(f"no selected series of study {result['study_instance_uid']} to copy tags from")
            self.write_report(result, selection, self.output_folder)

    def write_report(self, result: Mapping[str, Any], selection: StudySelectedSeries, output_dir: Path) -> Path:
        """Write the SR and the JSON of one study; returns the SR path."""
        identity = dict(result["model"])
        model_info = ModelInfo(
            creator=self.model_info.creator or "monai-r2gen",
            name=identity["name"],
            version=identity["version"],
            uid=identity["uid"],
        )
        series = selection.selected_series[0].series
        ds = write_common_modules(series, self.copy_tags, self.modality_type, self.sop_class_uid, model_info,
                                  self.equipment_info)  # fmt: skip
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: a report may hold any character
        for keyword in _NOT_IN_BASIC_TEXT_SR:  # written by the SDK's common modules; not part of this IOD
            if keyword in ds:
                delattr(ds, keyword)
        ds.SeriesDescription = "AI-generated report draft. Not for diagnostic use."
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "UNVERIFIED"
        ds.ReferencedPerformedProcedureStepSequence = DicomSequence([])
        ds.PerformedProcedureCodeSequence = DicomSequence([])
        ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([self._evidence(selection)])
        self._content_tree(ds, result, model_info, selection)
        if self.custom_tags:
            for keyword, value in self.custom_tags.items():
                if isinstance(keyword, str) and isinstance(value, str):
                    setattr(ds, keyword, value)
        path = output_dir / f"{ds.SOPInstanceUID}{self.DCM_EXTENSION}"
        save_dcm_file(ds, path)
        record = dict(result)
        record.update({"sr_file": path.name, "sr_sop_instance_uid": str(ds.SOPInstanceUID),
                       "sr_series_instance_uid": str(ds.SeriesInstanceUID)})  # fmt: skip
        path.with_suffix(".json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        logger.info("wrote %s and its JSON", path)
        return path

    @staticmethod
    def _evidence(selection: StudySelectedSeries) -> Dataset:
        study = Dataset()
        study.StudyInstanceUID = selection.study.StudyInstanceUID
        series_items = []
        for selected in selection.selected_series:
            series = Dataset()
            series.SeriesInstanceUID = selected.series.SeriesInstanceUID
            refs = []
            for instance in selected.series.get_sop_instances():
                native = instance.get_native_sop_instance()
                ref = Dataset()
                ref.ReferencedSOPClassUID = native.SOPClassUID
                ref.ReferencedSOPInstanceUID = native.SOPInstanceUID
                refs.append(ref)
            series.ReferencedSOPSequence = DicomSequence(refs)
            series_items.append(series)
        study.ReferencedSeriesSequence = DicomSequence(series_items)
        return study

    @staticmethod
    def _image_refs(result: Mapping[str, Any], selection: StudySelectedSeries) -> list[Dataset]:
        """IMAGE content items of the views the report was written from (in the order used)."""
        by_path = {}
        for selected in selection.selected_series:
            for instance in selected.series.get_sop_instances():
                native = instance.get_native_sop_instance()
                by_path[str(getattr(native, "filename", ""))] = native
        items = []
        for path in result.get("views", []):
            native = by_path.get(str(path))
            if native is None:
                continue
            ref = Dataset()
            ref.ReferencedSOPClassUID = native.SOPClassUID
            ref.ReferencedSOPInstanceUID = native.SOPInstanceUID
            items.append(_content("INFERRED FROM", "IMAGE", _code("121112", "DCM", "Source of Measurement"),
                                  ReferencedSOPSequence=DicomSequence([ref])))  # fmt: skip
        return items

    def _content_tree(
        self, ds: Dataset, result: Mapping[str, Any], model_info: ModelInfo, selection: StudySelectedSeries
    ) -> None:
        """Root container (LOINC 18748-4) with the device observer context and the report text."""
        ds.ValueType = "CONTAINER"
        ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
        ds.ContinuityOfContent = "SEPARATE"
        observer = [
            _content("HAS OBS CONTEXT", "CODE", _code("121005", "DCM", "Observer Type"),
                     ConceptCodeSequence=DicomSequence([_code("121007", "DCM", "Device")])),
            _content("HAS OBS CONTEXT", "UIDREF", _code("121012", "DCM", "Device Observer UID"), UID=model_info.uid),
            _content("HAS OBS CONTEXT", "TEXT", _code("121013", "DCM", "Device Observer Name"),
                     TextValue=model_info.name),
            _content("HAS OBS CONTEXT", "TEXT", _code("121014", "DCM", "Device Observer Manufacturer"),
                     TextValue=model_info.creator),
            _content("HAS OBS CONTEXT", "TEXT", _code("121015", "DCM", "Device Observer Model Name"),
                     TextValue=model_info.name),
            _content("HAS OBS CONTEXT", "TEXT", _code("111003", "DCM", "Algorithm Version"),
                     TextValue=model_info.version),
        ]  # fmt: skip
        text = _content("CONTAINS", "TEXT", _code("121071", "DCM", "Findings"), TextValue=sr_text(result["report"]))
        images = self._image_refs(result, selection)
        if images:
            text.ContentSequence = DicomSequence(images)
        ds.ContentSequence = DicomSequence([*observer, text])
