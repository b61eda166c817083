"""``POST /documents``: a document uploaded (multipart/form-data), committed before it is
answered (engine/documents/intake.py).

The form: ``file`` (the bytes: PDF, TIFF, JPEG or PNG, told by their magic, not the part's
content type or name), ``mrn``, ``document_type`` (a code of the site's document type table),
``date`` (YYYY-MM-DD; default today in ENGINE_TIMEZONE) and, optionally, ``appointment``,
``authority``, ``practice``, ``department``, ``encounter``, ``author`` and ``title``. Roles
integration or admin.

The body is parsed as it arrives (python-multipart's streaming parser, in a worker thread): the
file part goes straight to the intake's spool file while hashed and counted, never into memory
and never into a second temporary file, and reading stops one byte past
``ENGINE_MAX_DOCUMENT_BYTES`` (a declared ``Content-Length`` over it is refused unread). Every
byte of the body counts, not only the file's: a body past the cap and 128 KiB for the form
(whatever follows the form's closing boundary too) is refused (413) where it crosses that.

Answers: 201 ``{"document_id", "message_id", "sha256", "size", "media_type", "duplicate"}``,
200 with the first one's ids when the same bytes were already stored for the patient; 413 over
the cap, 415 not a type taken (or not multipart), 422 a PDF that is encrypted or does not open,
bad metadata or a malformed form; each refusal as ``{"detail", "refusal", "message_id"}``, the
refusal recorded (a ``messages`` row of kind ``document`` in state ``error``). 503 when the
store failed: nothing was kept, send again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from engine.api.auth import IntegrationDep
from engine.api.deps import MetricsDep, peer_of
from engine.documents.intake import (
    Accepted,
    DocumentFields,
    DocumentIntake,
    DocumentRefused,
    Spool,
    StoreUnavailable,
)

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["FORM_FIELDS", "BeforeFile", "receive_upload", "router"]

log = logging.getLogger(__name__)

router = APIRouter()

#: the form's text fields (the ``file`` part beside them)
FORM_FIELDS = frozenset(
    {
        "mrn",
        "document_type",
        "date",
        "appointment",
        "authority",
        "practice",
        "department",
        "encounter",
        "author",
        "title",
    }
)
#: the longest text field taken (each is at most 255 characters once checked)
_FIELD_BYTES = 4096
#: the parts a form may have: its fields, the file, and a few a client adds unasked
_MAX_PARTS = 24
#: what a form holds beside the file (fields, boundaries, part headers): a declared
#: Content-Length may be this much over the cap
_FORM_SLACK = 128 * 1024
#: how much of the body is handed to the parser's thread at once: each hand-off costs two
#: context switches, so a 1 MiB scan goes over in one or two, while an upload holds at most
#: this much beside its spool file
_FEED_BYTES = 1024 * 1024
_STATUS = {"size": 413, "type": 415, "pdf": 422, "metadata": 422}


class _FormProblem(Exception):
    """The multipart form is not what POST /documents takes."""


#: called with the text fields read so far when the ``file`` part begins (the console's upload
#: checks its CSRF token there, before a byte of the document is spooled); it raises to refuse
BeforeFile = Callable[[dict[str, str]], None]


def _base_name(value: str) -> str:
    """A part's file name without any folder (a browser on Windows may send ``C:\\...``)."""
    return PureWindowsPath(PurePosixPath(value).name).name[:255]


class _Form:
    """A multipart body parsed as it arrives: text fields kept (small, counted), the ``file``
    part written to the spool. Fed from a worker thread."""

    def __init__(
        self,
        boundary: bytes,
        spool: Spool,
        *,
        extra_fields: frozenset[str] = frozenset(),
        before_file: BeforeFile | None = None,
    ) -> None:
        self.spool = spool
        self.extra_fields = extra_fields
        self.before_file = before_file
        self.fields: dict[str, str] = {}
        self.file_name: str | None = None
        self.files = 0
        self.parts = 0
        self._name: str | None = None
        self._is_file = False
        self._data = bytearray()
        self._header = b""
        self._value = b""
        self._disposition = b""
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._begin,
            "on_part_data": self._part_data,
            "on_part_end": self._end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }
        self._parser = MultipartParser(boundary, callbacks)

    def feed(self, chunk: bytes) -> bool:
        """Parse ``chunk``; False once the file is over the cap (read no more)."""
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise _FormProblem(f"not a valid multipart/form-data body ({exc})") from None
        return not self.spool.over

    def feed_all(self, chunks: list[bytes]) -> bool:
        """:meth:`feed` each chunk; False once over the cap."""
        return all(self.feed(chunk) for chunk in chunks if chunk)

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise _FormProblem(f"not a valid multipart/form-data body ({exc})") from None

    def _begin(self) -> None:
        self.parts += 1
        if self.parts > _MAX_PARTS:
            raise _FormProblem(f"more than {_MAX_PARTS} parts in the form")
        self._name, self._is_file, self._data = None, False, bytearray()
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise _FormProblem("a part of the form has no name (Content-Disposition name=)")
        self._name = name.decode("utf-8", "replace")
        if self._name == "file":
            self.files += 1
            if self.files > 1:
                raise _FormProblem("one file per request (the form has several 'file' parts)")
            if self.before_file is not None:
                self.before_file(self.fields)
            self._is_file = True
            filename = options.get(b"filename")
            if filename:
                self.file_name = _base_name(filename.decode("utf-8", "replace")) or None
        elif self._name not in FORM_FIELDS and self._name not in self.extra_fields:
            raise _FormProblem(
                f"unknown form field {self._name[:64]!r} (the form takes file and "
                f"{', '.join(sorted(FORM_FIELDS))})"
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.spool.write(data[start:end])  # nothing more is written once over the cap
            return
        self._data += data[start:end]
        if len(self._data) > _FIELD_BYTES:
            raise _FormProblem(f"form field {self._name!r} is longer than {_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if not self._is_file and self._name is not None:
            self.fields[self._name] = self._data.decode("utf-8", "replace")


def _intake(request: Request) -> DocumentIntake:
    intake = getattr(request.app.state, "documents", None)
    if not isinstance(intake, DocumentIntake):
        raise HTTPException(503, detail="documents are not taken here (no intake configured)")
    return intake


def _refused(refused: DocumentRefused) -> JSONResponse:
    return JSONResponse(
        {"detail": str(refused), "refusal": refused.kind, "message_id": refused.message_id},
        status_code=_STATUS[refused.kind],
    )


def _unavailable(exc: StoreUnavailable) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "30"})


def _fields(values: dict[str, str]) -> DocumentFields:
    return DocumentFields(**{k: v for k, v in values.items() if k in FORM_FIELDS})


@router.post("/documents", status_code=201)
async def post_document(
    request: Request, principal: IntegrationDep, metrics: MetricsDep
) -> JSONResponse:
    """Store one uploaded document; answer with its ids once committed."""
    intake = _intake(request)
    who: dict[str, Any] = {"channel": "http", "sender": principal.subject, "peer": peer_of(request)}
    try:
        accepted = await receive_upload(request, intake, who, metrics)
    except DocumentRefused as refused:
        return _refused(refused)
    except StoreUnavailable as exc:
        return _unavailable(exc)
    return JSONResponse(accepted.to_dict(), status_code=200 if accepted.duplicate else 201)


async def receive_upload(
    request: Request,
    intake: DocumentIntake,
    who: dict[str, Any],
    metrics: MetricsDep,
    *,
    extra_fields: frozenset[str] = frozenset(),
    before_file: BeforeFile | None = None,
) -> Accepted:
    """Read the request's multipart body into ``intake`` (see the module docstring): the one
    upload path of ``POST /documents`` and the console's Documents page. ``who`` is the
    intake's ``channel``, ``sender`` and ``peer``; ``extra_fields`` are form fields taken
    besides :data:`FORM_FIELDS` (and left out of the document's metadata); ``before_file`` is
    called when the file part begins (whatever it raises is raised from here, nothing kept).

    Raises HTTPException 415 for a body that is not multipart, DocumentRefused (recorded)
    for a document refused, StoreUnavailable when the store failed."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype.lower() != b"multipart/form-data" or not boundary:
        raise HTTPException(
            415, detail="content-type must be multipart/form-data (with a boundary)"
        )
    try:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit():
            limit = intake.max_bytes + _FORM_SLACK
            if len(declared.lstrip("0")) > len(str(limit)) or int(declared) > limit:
                metrics.record_error("receive")
                raise await intake.refuse(
                    f"document larger than the {intake.max_bytes}-byte limit "
                    "(ENGINE_MAX_DOCUMENT_BYTES): refused unread (Content-Length "
                    f"{declared[:20]})",
                    kind="size",
                    fields=DocumentFields(),
                    size=int(declared) if len(declared) < 19 else 0,
                    **who,
                )
        return await _receive(request, intake, boundary, who, metrics, extra_fields, before_file)
    except StoreUnavailable:
        metrics.record_error("store")
        raise


async def _read(
    request: Request,
    intake: DocumentIntake,
    boundary: bytes,
    extra_fields: frozenset[str],
    before_file: BeforeFile | None,
) -> tuple[Spool, _Form, int, _FormProblem | None]:
    """Read the body into a spool file through its form: the spool, the form, the bytes read,
    and the problem the form showed (None: well formed so far).

    The body's pieces are handed to a thread a few at a time (one hand-off per MiB, not one
    per 64 KiB read; the first one makes the spool file too), and each at once past the cap (a
    sender that stops there, waiting, is answered)."""
    started: tuple[Spool, _Form] | None = None
    pending: list[bytes] = []
    size = received = 0
    body_limit = intake.max_bytes + _FORM_SLACK
    problem: _FormProblem | None = None

    async def feed() -> bool:
        nonlocal started, problem
        if started is None:
            spool, form, more = await intake.run(
                _start, intake, boundary, pending, extra_fields, before_file
            )
            started = spool, form
        else:
            try:
                more = await intake.run(started[1].feed_all, pending)
            except _FormProblem as found:
                more = found
        if isinstance(more, _FormProblem):
            problem = more
            return False
        return more

    try:
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            received += len(chunk)
            if size >= _FEED_BYTES or received > intake.max_bytes:
                if not await feed():
                    break  # over the cap, or not a form taken: the rest is never read
                pending, size = [], 0
            if received > body_limit:
                break  # the file is within the cap, the body is not: read no more
        else:
            if pending or started is None:
                await feed()
    except BaseException:
        if started is not None:
            await intake.run(started[0].discard)
        raise
    assert started is not None
    return started[0], started[1], received, problem


async def _receive(
    request: Request,
    intake: DocumentIntake,
    boundary: bytes,
    who: dict[str, Any],
    metrics: MetricsDep,
    extra_fields: frozenset[str],
    before_file: BeforeFile | None,
) -> Accepted:
    spool, form, received, problem = await _read(
        request, intake, boundary, extra_fields, before_file
    )
    try:
        try:
            if problem is not None:
                raise problem
            if received > intake.max_bytes + _FORM_SLACK and not spool.over:
                metrics.record_error("receive")
                raise await intake.refuse(
                    f"request body larger than the {intake.max_bytes}-byte limit "
                    f"(ENGINE_MAX_DOCUMENT_BYTES) and {_FORM_SLACK} bytes for the form: "
                    "refused unread past that",
                    kind="size",
                    fields=_fields(form.fields),
                    spool=spool,
                    file_name=form.file_name,
                    **who,
                )
            if not spool.over:
                form.finish()
                if form.files == 0:
                    raise _FormProblem("the form has no 'file' part (the document)")
        except _FormProblem as found:
            metrics.record_error("receive")
            raise await intake.refuse(
                str(found),
                kind="metadata",
                fields=_fields(form.fields),
                spool=spool,
                file_name=form.file_name,
                **who,
            ) from None
        try:
            accepted = await intake.accept_spooled(
                spool, _fields(form.fields), file_name=form.file_name, **who
            )
        except DocumentRefused:
            metrics.record_error("receive")
            raise
        metrics.record_receipt(channel="http", ack_code=None, stored=not accepted.duplicate)
        return accepted
    finally:
        if not spool.discarded:
            await intake.run(spool.discard)


def _start(
    intake: DocumentIntake,
    boundary: bytes,
    first: list[bytes],
    extra_fields: frozenset[str],
    before_file: BeforeFile | None,
) -> tuple[Spool, _Form, bool | _FormProblem]:
    """In a thread: the upload's spool file made and the body's first piece fed to its form,
    in one hand-off. The third value: whether to read on (False past the cap), or the problem
    the first piece showed (for the caller to record with the spool). Anything else raised
    (``before_file``'s refusal) leaves no spool file behind."""
    spool = intake.spool()
    try:
        form = _Form(boundary, spool, extra_fields=extra_fields, before_file=before_file)
        try:
            return spool, form, form.feed_all(first)
        except _FormProblem as problem:
            return spool, form, problem
    except BaseException:
        spool.discard()
        raise
