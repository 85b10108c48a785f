"""The DICOM Basic Text SR that carries a generated report back to the PACS (pydicom only).

One builder, :func:`build_report_sr`, is used by the MONAI Deploy app (``apps/deploy/operators.py``) and by the
DICOMweb round trip (:mod:`monai_r2gen.pacs`), so both write the same document:

- the study of the source images: Study Instance UID, the Patient, General Study and Patient Study attributes are
  copied from one source header (Type 2 attributes always, empty when the source lacks them; Type 3 ones when
  present), in a new series of its own (Modality SR);
- the images the report was written from, listed in the Current Requested Procedure Evidence Sequence and, in the
  order used (frontal first), as ``INFERRED FROM`` IMAGE items under the report text;
- the model: in the Contributing Equipment Sequence (name, version, Device UID derived from the model's fingerprint,
  purpose "Processing Algorithm", as IHE AI Results asks) and in the content tree as the device observer;
- that it is a machine-generated draft that needs a radiologist's review: a Comment item beside the report text
  (:func:`review_statement`), the series description (:data:`SR_SERIES_DESCRIPTION`), Verification Flag
  ``UNVERIFIED`` and Preliminary Flag ``PRELIMINARY``.

The text is UTF-8 (Specific Character Set ``ISO_IR 192``). The document validates with ``dciodvfy`` (dicom3tools)
without errors. Works with pydicom 2.4 and 3.x. Nothing here logs patient identifiers.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "BASIC_TEXT_SR",
    "SR_SERIES_DESCRIPTION",
    "SR_SERIES_NUMBER",
    "SourceInstance",
    "build_report_sr",
    "content_tree",
    "dataset_bytes",
    "evidence_sequence",
    "model_identity",
    "read_sources",
    "review_statement",
    "sr_text",
    "views_in_order",
    "write_report_sr",
]

logger = logging.getLogger(__name__)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
"""SOP Class UID of Basic Text SR Storage."""

SR_SERIES_DESCRIPTION = "AI-generated draft report; radiologist review required"
"""Series Description of every report SR (also how :mod:`monai_r2gen.pacs` tells a study already reported)."""

SR_SERIES_NUMBER = 990
"""Series Number of the report series (high, so that viewers list it after the acquired series)."""

_PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3
# C0 controls other than TAB, LF, FF and CR are not allowed in DICOM text values (PS3.5 6.1.3)
_FORBIDDEN_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# copied from the source header: (keyword, DICOM type); type 2 is always written (empty when absent)
_PATIENT_AND_STUDY = (
    ("PatientName", 2),
    ("PatientID", 2),
    ("IssuerOfPatientID", 3),
    ("PatientBirthDate", 2),
    ("PatientSex", 2),
    ("StudyInstanceUID", 1),
    ("StudyDate", 2),
    ("StudyTime", 2),
    ("ReferringPhysicianName", 2),
    ("StudyID", 2),
    ("AccessionNumber", 2),
    ("StudyDescription", 3),
    ("PatientAge", 3),
    ("PatientSize", 3),
    ("PatientWeight", 3),
)
_LO_MAX = 64  # characters of an LO value (model name, version)


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


def model_identity(result: Mapping[str, Any], model_path: str | os.PathLike) -> dict[str, str]:
    """Name, version and a stable Device UID of the model that wrote ``result``.

    The name and fingerprint come from the inference result's ``"model"`` entry when present, else from the model
    folder's name and :func:`monai_r2gen.networks.generator.fingerprint`; the version is the first 16 hex digits of
    the fingerprint and the UID is derived from it (same model, same UID).

    Args:
        result: a result dict of :class:`monai_r2gen.inference.ReportInference`.
        model_path: the model folder.

    Returns:
        ``{"name", "version", "fingerprint", "uid"}``.
    """
    model = dict(result.get("model") or {})
    name = str(model.get("name") or Path(model_path).name or "monai-r2gen")
    fingerprint = str(model.get("fingerprint") or "")
    if not fingerprint:
        from monai_r2gen.networks.fingerprints import fingerprint as compute_fingerprint

        fingerprint = compute_fingerprint(model_path)
    digest = fingerprint.split(":")[-1]
    # a name-based UUID under 2.25 (PS3.5 B.2): same fingerprint, same UID (pydicom's generate_uid(prefix=None)
    # ignores its entropy sources and would give a new one on every call)
    uid = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'urn:monai-r2gen:model:{fingerprint}').int}"
    return {"name": name[:_LO_MAX], "version": digest[:16], "fingerprint": fingerprint, "uid": uid}


def review_statement(model: Mapping[str, str]) -> str:
    """The sentence that says the report is machine-generated and must be reviewed by a radiologist."""
    return (
        f"Machine-generated report: written automatically by the model {model['name']} (version {model['version']}), "
        "not by a physician. It is a draft that a radiologist must review and verify before any clinical use."
    )


@dataclass(frozen=True)
class SourceInstance:
    """A source image the report refers to (UIDs only; no patient identifiers).

    Attributes:
        study_instance_uid: its study.
        series_instance_uid: its series.
        sop_class_uid: its SOP class.
        sop_instance_uid: its SOP instance.
        path: the file it was read from ("" when unknown); matches the ``views`` of an inference result.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset, path: str | os.PathLike | None = None) -> SourceInstance:
        """The UIDs of a (header) dataset; ``path`` defaults to the dataset's ``filename`` when it has one.

        Raises:
            ValueError: a UID is missing.
        """
        uids = [
            str(ds.get(k) or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")
        ]
        if not all(uids):
            raise ValueError("a source instance needs Study, Series and SOP Instance UIDs and a SOP Class UID")
        name = path if path is not None else getattr(ds, "filename", None)
        return cls(*uids, path=os.fspath(name) if isinstance(name, (str, os.PathLike)) else "")


def read_sources(paths: Iterable[str | os.PathLike]) -> tuple[Dataset, list[SourceInstance]]:
    """Headers of the source files: the first one (its patient and study attributes go into the SR) and the UIDs of
    each (the evidence).

    Raises:
        ValueError: no path given, or a file lacks its UIDs.
    """
    first: Dataset | None = None
    instances = []
    for path in paths:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True)
        first = ds if first is None else first
        instances.append(SourceInstance.from_dataset(ds, path))
    if first is None:
        raise ValueError("no source image given")
    return first, instances


def views_in_order(instances: Sequence[SourceInstance], views: Iterable[str | os.PathLike]) -> list[SourceInstance]:
    """The instances of ``views`` (file paths, e.g. an inference result's ``views``), in that order."""
    by_path = {os.fspath(i.path): i for i in instances if i.path}
    return [by_path[os.fspath(v)] for v in views if os.fspath(v) in by_path]


def evidence_sequence(instances: Iterable[SourceInstance]) -> DicomSequence:
    """Items of the Current Requested Procedure Evidence Sequence: studies, their series and instances (first-seen
    order; an instance listed twice counts once)."""
    studies: dict[str, dict[str, dict[str, str]]] = {}
    for instance in instances:
        series = studies.setdefault(instance.study_instance_uid, {}).setdefault(instance.series_instance_uid, {})
        series.setdefault(instance.sop_instance_uid, instance.sop_class_uid)
    items = []
    for study_uid, series_map in studies.items():
        study = Dataset()
        study.StudyInstanceUID = study_uid
        series_items = []
        for series_uid, sops in series_map.items():
            series = Dataset()
            series.SeriesInstanceUID = series_uid
            refs = []
            for sop_uid, sop_class in sops.items():
                ref = Dataset()
                ref.ReferencedSOPClassUID = sop_class
                ref.ReferencedSOPInstanceUID = sop_uid
                refs.append(ref)
            series.ReferencedSOPSequence = DicomSequence(refs)
            series_items.append(series)
        study.ReferencedSeriesSequence = DicomSequence(series_items)
        items.append(study)
    return DicomSequence(items)


def content_tree(ds: Dataset, report: str, model: Mapping[str, str], views: Sequence[SourceInstance] = ()) -> None:
    """Write the SR Document Content of ``ds``: a root container (LOINC 18748-4, Diagnostic Imaging Report) with the
    device observer context (the model), the report text (Findings) inferred from the views, and the review
    statement (Comment).

    Args:
        ds: the SR dataset (changed in place).
        report: the generated report.
        model: ``name``, ``version``, ``uid`` and optionally ``creator`` (see :func:`model_identity`).
        views: the images the report was written from, in the order used.
    """
    creator = str(model.get("creator") or "monai-r2gen")
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    observer = [
        _content("HAS OBS CONTEXT", "CODE", _code("121005", "DCM", "Observer Type"),
                 ConceptCodeSequence=DicomSequence([_code("121007", "DCM", "Device")])),
        _content("HAS OBS CONTEXT", "UIDREF", _code("121012", "DCM", "Device Observer UID"), UID=model["uid"]),
        _content("HAS OBS CONTEXT", "TEXT", _code("121013", "DCM", "Device Observer Name"), TextValue=model["name"]),
        _content("HAS OBS CONTEXT", "TEXT", _code("121014", "DCM", "Device Observer Manufacturer"), TextValue=creator),
        _content("HAS OBS CONTEXT", "TEXT", _code("121015", "DCM", "Device Observer Model Name"),
                 TextValue=model["name"]),
        _content("HAS OBS CONTEXT", "TEXT", _code("111003", "DCM", "Algorithm Version"), TextValue=model["version"]),
    ]  # fmt: skip
    text = _content("CONTAINS", "TEXT", _code("121071", "DCM", "Findings"), TextValue=sr_text(report))
    images = []
    for view in views:
        ref = Dataset()
        ref.ReferencedSOPClassUID = view.sop_class_uid
        ref.ReferencedSOPInstanceUID = view.sop_instance_uid
        images.append(_content("INFERRED FROM", "IMAGE", _code("121112", "DCM", "Source of Measurement"),
                               ReferencedSOPSequence=DicomSequence([ref])))  # fmt: skip
    if images:
        text.ContentSequence = DicomSequence(images)
    review = _content("CONTAINS", "TEXT", _code("121106", "DCM", "Comment"), TextValue=review_statement(model))
    ds.ContentSequence = DicomSequence([*observer, text, review])


def _contributing_equipment(model: Mapping[str, str]) -> Dataset:
    """The model as IHE AI Results describes an algorithm (Contributing Equipment Sequence item)."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code("Newcode1", "99IHE", "Processing Algorithm")])
    item.Manufacturer = str(model.get("creator") or "monai-r2gen")
    item.ManufacturerModelName = model["name"]
    item.SoftwareVersions = model["version"]
    item.DeviceUID = model["uid"]
    return item


def _copy_patient_and_study(source: Dataset | None, ds: Dataset) -> None:
    """Patient, General Study and Patient Study attributes from ``source``; a new study when it is None."""
    for keyword, kind in _PATIENT_AND_STUDY:
        value = source.get(keyword) if source is not None else None
        if value is None or value == "":
            if kind == 2:
                setattr(ds, keyword, "")
            continue
        if keyword.endswith("Name"):  # PN: re-encoded in the SR's character set
            value = str(value)
        setattr(ds, keyword, value)
    if "StudyInstanceUID" not in ds:
        if source is not None:
            raise ValueError("the source header has no Study Instance UID")
        ds.StudyInstanceUID = generate_uid()


def build_report_sr(
    report: str,
    model: Mapping[str, str],
    evidence: Sequence[SourceInstance],
    views: Sequence[SourceInstance] = (),
    *,
    source: Dataset | None = None,
    manufacturer: str = "monai-r2gen",
    manufacturer_model: str = "monai-r2gen",
    software_version: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
    now: datetime.datetime | None = None,
) -> Dataset:
    """A Basic Text SR of ``report`` in the study of ``source``, with file meta, ready to write or to STOW.

    Args:
        report: the generated report.
        model: ``name``, ``version``, ``uid`` and optionally ``creator`` (see :func:`model_identity`).
        evidence: every source image of the request (Current Requested Procedure Evidence Sequence).
        views: the images the report was written from, in the order used (IMAGE items under the text).
        source: a source header whose patient and study attributes are copied; None writes a new study with empty
            patient attributes.
        manufacturer: General Equipment Manufacturer (the software that wrote the SR).
        manufacturer_model: General Equipment Manufacturer's Model Name.
        software_version: Software Versions (default: the monai-r2gen version).
        series_number: Series Number of the new series.
        now: the creation time (default: now, local time zone).

    Returns:
        the dataset (explicit VR little endian file meta, UTF-8).

    Raises:
        ValueError: ``source`` has no Study Instance UID, or the model identity lacks a key.
    """
    missing = [key for key in ("name", "version", "uid") if not model.get(key)]
    if missing:
        raise ValueError(f"the model identity lacks {', '.join(missing)}")
    if software_version is None:
        from monai_r2gen import __version__ as software_version
    moment = (now or datetime.datetime.now()).astimezone()
    date, time = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
    sop_uid = generate_uid()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(BASIC_TEXT_SR)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: a report (and a copied name) may hold any character
    ds.SOPClassUID = UID(BASIC_TEXT_SR)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.TimezoneOffsetFromUTC = moment.strftime("%z")
    ds.ContributingEquipmentSequence = DicomSequence([_contributing_equipment(model)])
    # Patient, General Study, Patient Study
    _copy_patient_and_study(source, ds)
    # SR Document Series
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = SR_SERIES_DESCRIPTION
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([])
    # General Equipment
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = manufacturer_model[:_LO_MAX]
    ds.SoftwareVersions = str(software_version)[:_LO_MAX]
    # SR Document General
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"  # no radiologist has verified it
    ds.PreliminaryFlag = "PRELIMINARY"  # a draft, not the final report
    ds.ContentDate, ds.ContentTime = date, time
    ds.PerformedProcedureCodeSequence = DicomSequence([])
    if evidence:
        ds.CurrentRequestedProcedureEvidenceSequence = evidence_sequence(evidence)
    # SR Document Content
    content_tree(ds, report, model, views)
    return ds


def _write(ds: Dataset, target: Any) -> None:
    """Write ``ds`` as a Part-10 file to a path or a binary file object (pydicom 2.4 and 3.x)."""
    if _PYDICOM_3:
        pydicom.dcmwrite(target, ds, enforce_file_format=True)
    else:  # pragma: no cover - exercised in the pydicom 2.4 environments
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(target, ds, write_like_original=False)


def dataset_bytes(ds: Dataset) -> bytes:
    """``ds`` as the bytes of a DICOM Part-10 file (what STOW-RS sends)."""
    buffer = io.BytesIO()
    _write(ds, buffer)
    return buffer.getvalue()


def write_report_sr(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` through a temporary file that replaces it once complete; returns the path."""
    from monai_r2gen.files import atomic_output

    with atomic_output(path, "wb") as handle:
        handle.write(dataset_bytes(ds))
    return Path(path)
