"""MONAI Deploy operators: report generation on selected radiograph series, and the DICOM Basic Text SR writer.

``ReportGenerationOperator`` loads the trained model once (on the first study) and writes reports through
:class:`monai_r2gen.inference.ReportInference`, the code path shared with the CLI, the bundle and MONAI Label.
``ReportSRWriterOperator`` is the SDK's :class:`DICOMTextSRWriterOperator` extended to one SR per study, built by
:func:`monai_r2gen.data.report_sr.build_report_sr` (the builder the DICOMweb round trip of :mod:`monai_r2gen.pacs`
uses too): the study's tags copied, the model named in the Contributing Equipment Sequence and in the content tree
(device observer), the views used referenced as evidence and from the report text, the review statement, UTF-8 text,
and a JSON result beside the SR.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.operators.dicom_text_sr_writer_operator import DICOMTextSRWriterOperator

from monai_r2gen.data.report_sr import (
    BASIC_TEXT_SR,
    SourceInstance,
    build_report_sr,
    model_identity,
    sr_text,
    views_in_order,
    write_report_sr,
)
from monai_r2gen.data.studies import Study, collect_studies
from monai_r2gen.files import atomic_write_text

__all__ = [
    "BASIC_TEXT_SR",
    "ReportGenerationOperator",
    "ReportSRWriterOperator",
    "model_identity",
    "sr_text",
]

logger = logging.getLogger(__name__)


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
        natives = [instance.get_native_sop_instance() for selected in selection.selected_series
                   for instance in selected.series.get_sop_instances()]  # fmt: skip
        evidence = [SourceInstance.from_dataset(native) for native in natives]
        model = {**dict(result["model"]), "creator": self.model_info.creator or "monai-r2gen"}
        equipment = self.equipment_info  # the SDK's default when none was given
        ds = build_report_sr(
            result["report"],
            model,
            evidence,
            views_in_order(evidence, result.get("views", [])),
            source=natives[0] if self.copy_tags else None,
            manufacturer=equipment.manufacturer,
            manufacturer_model=equipment.manufacturer_model,
            software_version=equipment.software_version_number or None,
        )
        if self.custom_tags:
            for keyword, value in self.custom_tags.items():
                if isinstance(keyword, str) and isinstance(value, str):
                    setattr(ds, keyword, value)
        path = write_report_sr(ds, output_dir / f"{ds.SOPInstanceUID}{self.DCM_EXTENSION}")
        record = dict(result)
        record.update({"sr_file": path.name, "sr_sop_instance_uid": str(ds.SOPInstanceUID),
                       "sr_series_instance_uid": str(ds.SeriesInstanceUID)})  # fmt: skip
        atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        logger.info("wrote %s and its JSON", path)
        return path
