"""``multipart/related`` bodies (RFC 2387, RFC 2046 section 5.1) as DICOMweb uses them.

STOW-RS sends DICOM instances as the parts of a ``multipart/related; type="application/dicom"`` request; WADO-RS
answers a study or series retrieval with the same kind of body. :func:`encode_multipart_related` builds such a body
(a boundary that occurs in no part), :func:`decode_multipart_related` splits one into its parts and their headers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["BodyPart", "MultipartError", "content_type_parameter", "decode_multipart_related",
           "encode_multipart_related"]  # fmt: skip

_CRLF = b"\r\n"
_TOKEN = re.compile(r"""\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)""")
_BOUNDARY_CHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")


class MultipartError(ValueError):
    """A body is not well-formed ``multipart/related`` (no boundary, truncated, bad header)."""


@dataclass(frozen=True)
class BodyPart:
    """One part of a multipart body.

    Attributes:
        content: the part's bytes.
        headers: its header fields, names in lower case (e.g. ``{"content-type": "application/dicom"}``).
    """

    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        """The part's media type without parameters, lower case ("" when it has no Content-Type)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def content_type_parameter(content_type: str, name: str) -> str | None:
    """A parameter of a Content-Type header value (quotes and escapes removed), or None when absent.

    Example: ``content_type_parameter('multipart/related; type="application/dicom"; boundary=abc', "boundary")``
    gives ``"abc"``.
    """
    _, _, parameters = content_type.partition(";")
    for match in _TOKEN.finditer(parameters):
        key, value = match.group(1).lower(), match.group(2).strip()
        if key != name.lower():
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        return value
    return None


def encode_multipart_related(
    parts: Iterable[bytes], content_type: str = "application/dicom", boundary: str | None = None
) -> tuple[bytes, str]:
    """A ``multipart/related`` body of ``parts``, each with ``Content-Type: <content_type>``.

    Args:
        parts: the contents (e.g. DICOM Part-10 files).
        content_type: the media type of every part (and the ``type`` parameter of the body).
        boundary: the boundary to use (default: a random one); it must occur in no part.

    Returns:
        ``(body, header)``: the body, and the value of the request's Content-Type header.

    Raises:
        MultipartError: no part, an invalid boundary, or a given boundary that occurs in a part.
    """
    contents = [bytes(p) for p in parts]
    if not contents:
        raise MultipartError("a multipart body needs at least one part")
    if boundary is None:
        boundary = uuid.uuid4().hex
        while any(boundary.encode("ascii") in c for c in contents):  # a random 128-bit boundary: practically never
            boundary = uuid.uuid4().hex
    elif not _BOUNDARY_CHARS.match(boundary):
        raise MultipartError(f"invalid multipart boundary {boundary!r} (RFC 2046: 1-70 characters of a limited set)")
    elif any(boundary.encode("ascii") in c for c in contents):
        raise MultipartError(f"boundary {boundary!r} occurs in a part")
    delimiter = b"--" + boundary.encode("ascii")
    head = delimiter + _CRLF + f"Content-Type: {content_type}".encode("ascii") + _CRLF + _CRLF
    chunks = []
    for content in contents:
        chunks.extend((head, content, _CRLF))
    chunks.append(delimiter + b"--" + _CRLF)
    return b"".join(chunks), f'multipart/related; type="{content_type}"; boundary={boundary}'


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    name = None
    for line in block.split(_CRLF):
        if not line:
            continue
        text = line.decode("latin-1")
        if text[0] in " \t" and name is not None:  # a folded header line continues the previous one
            headers[name] += " " + text.strip()
            continue
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise MultipartError(f"malformed part header line {text[:80]!r}")
        name = name.strip().lower()
        headers[name] = value.strip()
    return headers


def decode_multipart_related(body: bytes, content_type: str) -> list[BodyPart]:
    """Split a ``multipart/related`` (or any ``multipart/*``) body into its parts.

    Args:
        body: the body bytes.
        content_type: the Content-Type header of the body (it names the boundary).

    Returns:
        the parts, in order (the preamble and epilogue are dropped).

    Raises:
        MultipartError: not a multipart type, no boundary, or a body that is truncated or does not use it.
    """
    if not content_type.strip().lower().startswith("multipart/"):
        raise MultipartError(f"not a multipart body (Content-Type {content_type!r})")
    boundary = content_type_parameter(content_type, "boundary")
    if not boundary:
        raise MultipartError(f"no boundary in Content-Type {content_type!r}")
    view = memoryview(body)
    delimiter = b"--" + boundary.encode("latin-1")
    if body.startswith(delimiter):
        position = 0
    else:
        position = body.find(_CRLF + delimiter)
        if position < 0:
            raise MultipartError(f"the body ({len(body)} bytes) holds no boundary {boundary!r}")
        position += len(_CRLF)
    parts = []
    while True:
        position += len(delimiter)
        if body[position : position + 2] == b"--":
            return parts  # the close delimiter; anything after it is the epilogue
        end_of_line = body.find(_CRLF, position)
        if end_of_line < 0 or body[position:end_of_line].strip(b" \t"):
            raise MultipartError(f"malformed boundary line at byte {position - len(delimiter)}")
        start = end_of_line + len(_CRLF)
        following = body.find(_CRLF + delimiter, start)
        if following < 0:
            raise MultipartError(f"truncated body: part {len(parts) + 1} has no closing boundary")
        if body.startswith(_CRLF, start):  # a part without headers
            headers, content_start = {}, start + len(_CRLF)
        else:
            blank = body.find(_CRLF + _CRLF, start, following)
            if blank < 0:
                raise MultipartError(f"part {len(parts) + 1} has no blank line after its headers")
            headers, content_start = _headers(body[start:blank]), blank + 2 * len(_CRLF)
        parts.append(BodyPart(bytes(view[content_start:following]), headers))
        position = following + len(_CRLF)
