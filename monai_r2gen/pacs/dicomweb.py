"""A small DICOMweb client on ``requests``: QIDO-RS search, WADO-RS retrieval, STOW-RS storage (PS3.18).

Only what the report round trip needs: search studies, series and instances (DICOM JSON), retrieve a study or a
series as DICOM Part-10 files (``multipart/related; type="application/dicom"``, any transfer syntax), and store
instances. Every failure is a :class:`~monai_r2gen.errors.PacsError` naming the URL and, when the server answered,
the HTTP status. URLs carry UIDs and modalities only; nothing here logs or sends patient identifiers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests

from monai_r2gen.errors import PacsError, PacsResponseError
from monai_r2gen.pacs.multipart import MultipartError, decode_multipart_related, encode_multipart_related

__all__ = ["DICOM_JSON", "DicomWebClient", "json_value", "uids_of"]

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_STORE_TYPE = "application/dicom"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILURE_REASON = "00081197"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")
_BODY_SNIPPET = 200


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"not a DICOM keyword: {keyword!r}")
    return f"{tag:08X}"


def json_value(item: Mapping[str, Any], keyword: str, default: Any = None) -> Any:
    """The first value of an attribute of a DICOM JSON object (e.g. a QIDO-RS match), by keyword or hex tag."""
    tag = keyword if re.fullmatch(r"[0-9A-Fa-f]{8}", keyword) else _tag(keyword)
    values = (item.get(tag.upper()) or {}).get("Value") or []
    return values[0] if values else default


def _network_reason(exc: requests.RequestException, timeout: float) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    found = _ERRNO.search(str(exc))
    detail = found.group(0).strip() if found else type(exc).__name__
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect ({detail})"
    return f"request failed ({detail})"


def _http_reason(response: requests.Response) -> str:
    reason = response.reason or "error"
    kind = response.headers.get("Content-Type", "")
    if kind.startswith(("text/", "application/json", DICOM_JSON)) and response.content:
        text = " ".join(response.text.split())[:_BODY_SNIPPET]
        reason = f"{reason} ({text})"
    return reason


class DicomWebClient:
    """QIDO-RS, WADO-RS and STOW-RS against one DICOMweb root URL.

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc's plugin).
        session: a ``requests.Session`` to use (default: a new one); authentication, proxies and TLS settings go
            there.
        timeout: seconds to wait for the server to answer (connect and each read).
        auth: ``requests`` authentication (e.g. ``("user", "password")`` for HTTP basic), when not on the session.
        headers: further headers of every request (e.g. ``{"Authorization": "Bearer ..."}``).
        verify: TLS verification: True, False or a CA bundle path.
    """

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 120.0,
        auth: Any = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise PacsError(url, "not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.session = session if session is not None else requests.Session()
        if auth is not None:
            self.session.auth = auth
        if headers:
            self.session.headers.update(headers)
        self.session.verify = verify

    # ------------------------------------------------------------------------------------------------------------
    # HTTP
    # ------------------------------------------------------------------------------------------------------------

    def _path(self, *segments: str) -> str:
        return "/".join([self.url, *(quote(str(s), safe="") for s in segments)])

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise PacsError(url, _network_reason(exc, self.timeout)) from exc
        logger.debug("%s %s -> %d (%d bytes)", method, url, response.status_code, len(response.content))
        if response.status_code >= 400:
            raise PacsError(response.url or url, _http_reason(response), response.status_code)
        return response

    def _search(self, url: str, filters: Mapping[str, Any] | None, limit: int | None, offset: int | None) -> list:
        params: list[tuple[str, str]] = []
        for key, value in (filters or {}).items():
            values = [value] if isinstance(value, (str, int)) else list(value)
            params.extend((key, str(v)) for v in values)
        if limit is not None:
            params.append(("limit", str(int(limit))))
        if offset is not None:
            params.append(("offset", str(int(offset))))
        response = self._request("GET", url, params=params, headers={"Accept": DICOM_JSON})
        if response.status_code == 204 or not response.content.strip():
            return []
        try:
            matches = response.json()
        except ValueError as exc:
            raise PacsResponseError(response.url, "the search answer is not JSON", response.status_code) from exc
        if not isinstance(matches, list) or not all(isinstance(m, dict) for m in matches):
            raise PacsResponseError(response.url, "the search answer is not a list of DICOM JSON objects")
        return matches

    # ------------------------------------------------------------------------------------------------------------
    # QIDO-RS
    # ------------------------------------------------------------------------------------------------------------

    def search_studies(
        self, filters: Mapping[str, Any] | None = None, limit: int | None = None, offset: int | None = None
    ) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies``: the matching studies as DICOM JSON objects.

        Args:
            filters: attribute matching by keyword, e.g. ``{"StudyInstanceUID": uid}``, ``{"ModalitiesInStudy":
                "CR"}``, ``{"StudyDate": "20240101-20240131"}``, ``{"includefield": "StudyDescription"}``; a list
                value repeats the parameter.
            limit: the most matches to return.
            offset: matches to skip.
        """
        return self._search(self._path("studies"), filters, limit, offset)

    def search_series(
        self, study_instance_uid: str | None = None, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies/{study}/series`` (or ``/series`` when no study is given)."""
        url = self._path("studies", study_instance_uid, "series") if study_instance_uid else self._path("series")
        return self._search(url, filters, None, None)

    def search_instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """QIDO-RS ``/studies/{study}[/series/{series}]/instances``."""
        segments = ["studies", study_instance_uid]
        if series_instance_uid:
            segments += ["series", series_instance_uid]
        return self._search(self._path(*segments, "instances"), filters, None, None)

    # ------------------------------------------------------------------------------------------------------------
    # WADO-RS
    # ------------------------------------------------------------------------------------------------------------

    def _retrieve(self, url: str) -> list[bytes]:
        response = self._request("GET", url, headers={"Accept": _RETRIEVE_ACCEPT})
        kind = response.headers.get("Content-Type", "")
        try:
            parts = decode_multipart_related(response.content, kind)
        except MultipartError as exc:
            raise PacsResponseError(response.url, f"unusable WADO-RS answer: {exc}", response.status_code) from exc
        instances = [p.content for p in parts if p.content_type in ("", _STORE_TYPE)]
        if len(instances) != len(parts):
            logger.warning("%s: %d parts that are not application/dicom skipped", url, len(parts) - len(instances))
        return instances

    def retrieve_study(self, study_instance_uid: str) -> list[bytes]:
        """WADO-RS ``/studies/{study}``: every instance of the study as the bytes of a DICOM Part-10 file."""
        return self._retrieve(self._path("studies", study_instance_uid))

    def retrieve_series(self, study_instance_uid: str, series_instance_uid: str) -> list[bytes]:
        """WADO-RS ``/studies/{study}/series/{series}``: the series' instances as DICOM Part-10 files."""
        return self._retrieve(self._path("studies", study_instance_uid, "series", series_instance_uid))

    def retrieve_instance(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> bytes:
        """WADO-RS ``/studies/{study}/series/{series}/instances/{instance}``: one DICOM Part-10 file."""
        url = self._path("studies", study_instance_uid, "series", series_instance_uid, "instances", sop_instance_uid)
        instances = self._retrieve(url)
        if len(instances) != 1:
            raise PacsResponseError(url, f"expected one instance, got {len(instances)}")
        return instances[0]

    # ------------------------------------------------------------------------------------------------------------
    # STOW-RS
    # ------------------------------------------------------------------------------------------------------------

    def store_instances(self, instances: Iterable[bytes], study_instance_uid: str | None = None) -> dict[str, Any]:
        """STOW-RS ``/studies[/{study}]``: store DICOM Part-10 files; returns the server's answer (DICOM JSON).

        Raises:
            PacsError: the request failed (network, HTTP status >= 400).
            PacsResponseError: the server refused one of the instances (Failed SOP Sequence), naming its SOP
                Instance UID and failure reason.
        """
        body, content_type = encode_multipart_related(instances, _STORE_TYPE)
        url = self._path("studies", study_instance_uid) if study_instance_uid else self._path("studies")
        headers = {"Content-Type": content_type, "Accept": DICOM_JSON}
        response = self._request("POST", url, data=body, headers=headers)
        try:
            answer = response.json() if response.content.strip() else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        failed = (answer.get(_FAILED_SOP_SEQUENCE) or {}).get("Value") or []
        if failed:
            reasons = [
                f"{json_value(f, _REFERENCED_SOP_INSTANCE_UID, '?')} (failure reason {json_value(f, _FAILURE_REASON)})"
                for f in failed
            ]
            raise PacsResponseError(url, f"the server refused {', '.join(reasons)}", response.status_code)
        stored = (answer.get(_REFERENCED_SOP_SEQUENCE) or {}).get("Value") or []
        logger.info("STOW-RS %s: %d instance(s) stored (HTTP %d)", url, len(stored), response.status_code)
        return answer

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def uids_of(matches: Sequence[Mapping[str, Any]], keyword: str) -> list[str]:
    """The values of ``keyword`` (a UID attribute) in QIDO-RS matches, in order, each once."""
    return list(dict.fromkeys(str(v) for v in (json_value(m, keyword) for m in matches) if v))
