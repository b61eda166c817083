"""``engine convert``, ``engine validate``, ``engine mappings test``: files in, FHIR or HL7v2 out.

An HL7v2 file holds one message, messages back to back, or a batch file (FHS/BHS envelopes, HL7
v2.5.1 chapter 2, section 2.10.3); :func:`engine.hl7v2.codec.split_messages` cuts it into messages,
each with the line it starts on. One message in gives one Bundle (pretty JSON); several give
NDJSON, one Bundle per line in file order.

A message that cannot be read or converted does not stop the others: it is reported on stderr as
``FILE: message N (line L): reason`` (the reason names the segment or field, as the engine's errors
do; a stray line between messages is named by its own line in the file) and the command ends with
exit code 1. What a message carries that no map takes is reported the same way, as ``...: warning:
...``, without changing the exit code. A run of several messages ends with a summary on stderr
(``12 messages: 10 converted, 2 failed, 0 warnings``) and shows a progress bar on stderr when that
is a terminal and the run is long; ``quiet`` drops both, never an error or a warning, so data is
never lost in silence. A file of one message keeps a one-line error (``error: FILE: ...``).

``engine validate`` walks a file the same way: every message is checked (hl7apy, see
:mod:`engine.hl7v2.validate`) and every bad one reported, unreadable ones included.

Incomplete: ``convert`` and ``validate`` skip batch envelopes without checking them (BTS-1/FTS-1
counts, a missing trailer); :func:`engine.hl7v2.batch.parse_batch` checks them but stops at the
first bad message.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.pool
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from engine.errors import (
    ConversionError,
    EngineError,
    HL7DecodeError,
    HL7ParseError,
    HL7ValidationError,
    UnsupportedMessageError,
)
from engine.formats import detect_format
from engine.settings import Settings

__all__ = ["convert_file", "run_golden", "validate_file"]


def convert_file(
    data: bytes,
    name: str,
    *,
    to: str | None,
    settings: Settings,
    jobs: int | None = None,
    event: str | None = None,
    quiet: bool = False,
) -> int:
    """Convert one input file: the result on stdout, errors and warnings on stderr.

    Returns how many messages of a file of several failed (each one reported already); a file of
    one message or document that fails raises instead.
    """
    fmt = detect_format(data)
    target = (to or "").lower() or None
    if target not in (None, "fhir", "hl7v2", "x12"):
        raise ConversionError(f"--to {to!r}: choose fhir, hl7v2 or x12")
    if fmt == "unknown":
        raise ConversionError(
            f"{name}: not HL7v2 (MSH/FHS/BHS), X12 (ISA) or FHIR JSON; nothing to convert"
        )
    if fmt == "hl7v2":
        if target not in (None, "fhir"):
            raise ConversionError(f"{name}: HL7v2 converts to FHIR only (--to fhir)")
        return _hl7_to_fhir(data, name, settings, jobs, quiet)
    if fmt == "x12":
        if target not in (None, "fhir"):
            raise ConversionError(f"{name}: X12 converts to FHIR only (--to fhir)")
        _x12_to_fhir(data, name, settings)
        return 0
    if target == "fhir":
        raise ConversionError(f"{name}: the input is already FHIR: say --to hl7v2 or --to x12")
    _fhir_to_hl7(data, name, target, settings, event)
    return 0


def _x12_to_fhir(data: bytes, name: str, settings: Settings) -> None:
    """A 270 or 271 → a FHIR Bundle of CoverageEligibilityRequests or -Responses, its warnings
    (an envelope count that is off, a segment no map takes: X12 005010X279A1, segment and element
    named) on stderr; a TA1, a 999 or another transaction set → one error naming it."""
    from engine.x12.fhir import interchange_to_fhir

    try:
        bundle, warnings = interchange_to_fhir(data)
    except EngineError as exc:
        raise _located(exc, f"{name}: {exc.where}" if exc.where else name) from exc
    if settings.validate_fhir:
        from engine.mappings.fhir_validate import validate_bundle

        validate_bundle(bundle)
    sys.stdout.buffer.write(orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()
    for text in warnings:
        _stderr(f"{name}: warning: {text}")


def _hl7_to_fhir(data: bytes, name: str, settings: Settings, jobs: int | None, quiet: bool) -> int:
    from engine.hl7v2.codec import split_messages
    from engine.mappings import load_mappings

    global _WORKER
    pieces = [(line, raw) for line, raw in split_messages(data) if isinstance(raw, bytes)]
    if not pieces:
        raise ConversionError(f"{name}: no HL7v2 message found")
    total = len(pieces)
    single = total == 1
    report = _Report(name, data, pieces)
    _WORKER = _Converter(load_mappings(settings.mappings_dir), settings, pieces, single)
    # Bundles are trees of dicts without reference cycles, freed by reference counting; the
    # cyclic collector would only rescan the heap (restored at the end, for callers in process).
    collecting = gc.isenabled()
    gc.freeze()
    gc.disable()
    out = sys.stdout.buffer
    progress = _progress("converting", total, quiet)
    if jobs is None:
        jobs = min(os.cpu_count() or 1, 8) if total >= _PARALLEL_FROM else 1
    spans = [(i, min(i + _CHUNK, total)) for i in range(0, total, _CHUNK)]
    pool = None
    results: Iterator[tuple[bytes, list[_Event]]]
    if jobs > 1 and len(spans) > 1:
        # fork: the workers inherit the compiled mappings and the messages; only spans go out.
        # Each worker writes its NDJSON to a file of its own and the parent copies the files to
        # stdout in order (no pickling of results through pipes); failures and warnings come
        # back as (message index, ...) events.
        spool = tempfile.TemporaryDirectory(prefix="engine-convert-")
        _WORKER.spool = spool.name
        pool = _fork_pool(jobs)
        results = pool.imap(_convert_span, spans)
    else:
        spool = None
        results = map(_convert_span, spans)
    finished = False
    try:
        for (_start, end), (text, events) in zip(spans, results, strict=True):
            if spool is not None:
                out.flush()
                chunk = Path(text.decode())
                with chunk.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                chunk.unlink()
            else:
                out.write(text)
            if events:
                out.flush()  # a reader of both streams sees each report after the Bundle before it
            for index, kind, where, what in events:
                if not kind:
                    report.warning(index, what)
                elif single:
                    reason = f"{report.place(index, where)}: {what}" if where else what
                    raise _ERRORS.get(kind, EngineError)(reason, where=name)
                else:
                    report.failure(index, where, what)
            report.flush()
            if progress is not None:
                progress(end)
        finished = True
    finally:
        if pool is not None:
            _stop_pool(pool, finished)
        if spool is not None:
            spool.cleanup()
        out.flush()
        report.flush()
        if progress is not None:
            progress(-1)
        _WORKER = None
        gc.unfreeze()
        if collecting:
            gc.enable()
    if not single and not quiet:
        report.summary("converted")
    return report.failed


#: files with at least this many messages are converted by one process per core
_PARALLEL_FROM = 2000


def _fork_pool(jobs: int) -> multiprocessing.pool.Pool:
    """``jobs`` forked workers, each with :func:`_pool_signals`."""
    return multiprocessing.get_context("fork").Pool(jobs, initializer=_pool_signals)


def _stop_pool(pool: multiprocessing.pool.Pool, finished: bool) -> None:
    """Every span done: the workers are told to stop, and exit; else (a failure, Ctrl-C) the
    spans still running are stopped."""
    if finished:
        pool.close()
        pool.join()
    else:
        pool.terminate()


def _pool_signals() -> None:
    """A forked worker of the pool: SIGTERM (``Pool.terminate``) ends it and Ctrl-C is the
    parent's to handle, whatever the parent had set. A worker inherits its parent's handlers,
    and with one that only notes SIGTERM (an event loop's, in a process that ran one before) a
    worker that ``terminate`` found blocked on the task queue's lock (which ``terminate``
    itself takes) stayed alive, and ``terminate`` waited for it forever: the test suite hung
    so once (5 December 2026). A conversion that finished stops its workers with ``close``
    instead, which takes no lock of theirs."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: runs of at least this many messages show a progress bar (when stderr is a terminal)
_PROGRESS_FROM = 200
_CHUNK = 250
_WORKER: _Converter | None = None

#: (message index, error class name or "" for a warning, where, text) from a worker
_Event = tuple[int, str, str, str]


class _Converter:
    def __init__(
        self,
        mappings: Any,
        settings: Settings,
        pieces: list[tuple[int, bytes]],
        single: bool,
    ) -> None:
        self.mappings = mappings
        self.settings = settings
        self.pieces = pieces
        #: a file of one message: a failure of any kind ends the command, as it always has
        self.single = single
        #: in a worker process: the directory its NDJSON files go to
        self.spool: str | None = None
        self.validate: Callable[[dict[str, Any]], None] | None = None
        if settings.validate_fhir:
            from engine.mappings.fhir_validate import validate_bundle

            self.validate = validate_bundle


def _convert_span(span: tuple[int, int]) -> tuple[bytes, list[_Event]]:
    """Convert a run of messages: their NDJSON (pretty JSON for a lone message), and the failures
    and warnings of the run, in message order.

    A failed message leaves no line in the NDJSON and no warning (nothing of it was converted).
    An unexpected exception (a bug) in a file of several messages is reported by its class name
    only, which carries no field value; ENGINE_DEBUG=1 lets it through with its traceback.
    """
    from engine.hl7v2.codec import parse_message

    start, end = span
    conv = _WORKER
    assert conv is not None
    to_fhir = conv.mappings.to_fhir
    validate = conv.validate
    charset = conv.settings.default_charset
    lines: list[bytes] = []
    events: list[_Event] = []
    warnings: list[str] = []
    option = orjson.OPT_INDENT_2 if conv.single else 0
    for index, (_line, raw) in enumerate(conv.pieces[start:end], start):
        try:
            bundle = to_fhir(parse_message(raw, default_charset=charset), warnings)
            if validate is not None:
                validate(bundle)
            lines.append(orjson.dumps(bundle, option=option) + b"\n")
        except EngineError as exc:
            warnings.clear()
            events.append((index, type(exc).__name__, exc.where or "", exc.message))
            continue
        except Exception as exc:
            if conv.single or os.environ.get("ENGINE_DEBUG"):
                raise
            warnings.clear()
            text = f"internal error ({type(exc).__name__}); set ENGINE_DEBUG=1 for details"
            events.append((index, "internal", "", text))
            continue
        if warnings:
            events.extend((index, "", "", w) for w in warnings)
            warnings.clear()
    return _emit(conv, start, lines), events


def _emit(conv: _Converter, start: int, lines: list[bytes]) -> bytes:
    """The NDJSON itself, or (in a worker) the path of the file it was written to."""
    if conv.spool is None:
        return b"".join(lines)
    path = Path(conv.spool) / f"{start:09d}.ndjson"
    with path.open("wb") as fh:
        fh.writelines(lines)
    return str(path).encode()


_ERRORS: dict[str, type[EngineError]] = {
    cls.__name__: cls
    for cls in (
        EngineError,
        ConversionError,
        HL7ParseError,
        HL7DecodeError,
        UnsupportedMessageError,
        HL7ValidationError,
    )
}

#: an error's ``where`` that names a segment of the message: ``segment 4`` or ``segment 4 (PV1)``
_SEGMENT_RE = re.compile(r"segment (\d+)(?: \(([^)]*)\))?")


class _Report:
    """The per-message lines on stderr, ``FILE: message N (line L): ...``, and their counts."""

    def __init__(self, name: str, data: bytes, pieces: list[tuple[int, bytes]]) -> None:
        self.name = name
        self.data = data
        self.pieces = pieces
        self.failed = 0
        self.warnings = 0
        self._lines: list[bytes] | None = None
        #: report lines not yet written: a run's are written at once (a file may hold thousands)
        self._pending: list[str] = []

    def where(self, index: int) -> str:
        """``FILE: message N (line L)``; just ``FILE`` when the file holds one message."""
        if len(self.pieces) == 1:
            return self.name
        return f"{self.name}: message {index + 1} (line {self.pieces[index][0]})"

    def failure(self, index: int, where: str, text: str) -> None:
        self.failed += 1
        place = f"{self.place(index, where)}: " if where else ""
        self._pending.append(f"{self.where(index)}: {place}{text}")

    def warning(self, index: int, text: str) -> None:
        self.warnings += 1
        self._pending.append(f"{self.where(index)}: warning: {text}")

    def summary(self, done: str) -> None:
        total = len(self.pieces)
        w = "warning" if self.warnings == 1 else "warnings"
        self._pending.append(
            f"{total:,} messages: {total - self.failed:,} {done}, {self.failed:,} failed, "
            f"{self.warnings:,} {w}"
        )
        self.flush()

    def flush(self) -> None:
        """Write the pending lines to stderr (looked up now: a live progress bar swaps in a
        proxy that prints above the bar)."""
        if self._pending:
            self._pending.append("")
            sys.stderr.write("\n".join(self._pending))
            sys.stderr.flush()
            self._pending.clear()

    def place(self, index: int, where: str) -> str:
        """``where`` with the file line of the segment it names (``segment 4 (PV1, line 44)``):
        a stray line between two messages is part of the first one, and this finds it."""
        m = _SEGMENT_RE.match(where)
        if m is None:
            return where
        line = self._segment_line(self.pieces[index][0], int(m.group(1)))
        if line is None:
            return where
        inner = f"{m.group(2)}, line {line}" if m.group(2) else f"line {line}"
        return f"segment {m.group(1)} ({inner}){where[m.end() :]}"

    def _segment_line(self, first: int, n: int) -> int | None:
        """The file line of segment ``n`` of the message starting at line ``first``, counted as
        :func:`engine.hl7v2.codec.split_units` counts (blank lines and MLLP bytes skipped)."""
        if self._lines is None:
            self._lines = self.data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
        seen = 0
        for i in range(first - 1, len(self._lines)):
            text = self._lines[i].strip(b"\x0b\x1c")
            if text and not text.isspace():
                seen += 1
                if seen == n:
                    return i + 1
        return None


def _stderr(line: str) -> None:
    # sys.stderr looked up each time: a live progress bar swaps in a proxy that prints above it
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _progress(what: str, total: int, quiet: bool) -> Callable[[int], None] | None:
    """A transient bar on stderr for a long run at a terminal, else None.

    stdout is never drawn on: it carries the output. Lines written to stderr (and to stdout when
    that is the same terminal) while the bar shows are printed above it.
    """
    if quiet or total < _PROGRESS_FROM or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(
        console=Console(stderr=True), transient=True, redirect_stdout=sys.stdout.isatty()
    )
    task = bar.add_task(what, total=total)
    bar.start()

    def step(n: int) -> None:
        if n < 0:
            bar.stop()
        else:
            bar.update(task, completed=n)

    return step


def validate_file(data: bytes, name: str, *, settings: Settings, quiet: bool = False) -> int:
    """Check every HL7v2 message of a file (hl7apy): one line per problem on stdout, a line per
    valid message and a summary unless ``quiet``. Returns the number of invalid messages.

    An unreadable message (no MSH, a broken MSH-2, bytes not in its charset) counts as invalid and
    the others are still checked; in a file of one message it raises (one line, as before).
    """
    from engine.hl7v2.codec import parse_message, split_messages
    from engine.hl7v2.validate import validate

    pieces = [(line, raw) for line, raw in split_messages(data) if isinstance(raw, bytes)]
    if not pieces:
        raise EngineError(f"{name}: no HL7v2 message found")
    report = _Report(name, data, pieces)
    single = len(pieces) == 1
    progress = _progress("validating", len(pieces), quiet)
    bad = 0
    try:
        for index, (line, raw) in enumerate(pieces):
            try:
                message = parse_message(raw, default_charset=settings.default_charset)
                issues = validate(message)
            except EngineError as exc:
                place = report.place(index, exc.where) if exc.where else ""
                if single:
                    raise _located(exc, f"{name}: {place}" if place else name) from exc
                bad += 1
                where = f"{place}: " if place else ""
                _stdout(f"{report.where(index)}: {where}{exc.message} (error {exc.code})")
                continue
            except Exception as exc:  # a bug: named by class only, as convert does
                if single or os.environ.get("ENGINE_DEBUG"):
                    raise
                bad += 1
                _stdout(
                    f"{report.where(index)}: internal error ({type(exc).__name__}); "
                    "set ENGINE_DEBUG=1 for details"
                )
                continue
            label = (
                f"{name}: message {index + 1} "
                f"(line {line}, {message.type}, MSH-10 {message.control_id!r})"
            )
            if any(i.severity == "E" for i in issues):
                bad += 1
            elif not issues and not quiet:
                _stdout(f"{label}: valid")
            for issue in issues:
                _stdout(f"{label}: {issue}")
            if progress is not None and (index + 1) % 10 == 0:
                progress(index + 1)
    finally:
        if progress is not None:
            progress(-1)
    if not quiet:
        total = len(pieces)
        _stdout(f"{total} message(s), {total - bad} valid, {bad} invalid")
    return bad


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _fhir_to_hl7(
    data: bytes, name: str, target: str | None, settings: Settings, event: str | None
) -> None:
    from datetime import UTC, datetime

    from engine.mappings import load_mappings

    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConversionError(f"{name}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or "resourceType" not in doc:
        raise ConversionError(f"{name}: JSON without a resourceType is not FHIR")
    if target == "x12" or (target is None and _holds(doc, "CoverageEligibilityRequest")):
        from engine.x12.fhir import request_to_inquiry
        from engine.x12.x270 import build_270

        now = datetime.now(UTC)
        try:
            inquiry = request_to_inquiry(
                doc, originator_id=f"1{settings.eligibility_provider_npi}"[:10]
            )
            x270 = build_270(
                inquiry,
                sender_id=settings.x12_sender_id,
                receiver_id=inquiry.payer.payer_id,  # the payer, or its clearinghouse's ID
                control_number=int(now.timestamp()) % 1_000_000_000,
                now=now,
            )
        except EngineError as exc:
            raise _located(exc, f"{name}: {exc.where}" if exc.where else name) from exc
        sys.stdout.write(x270 if x270.endswith("\n") else x270 + "\n")
        sys.stdout.flush()
        return
    if settings.validate_fhir:
        from engine.mappings.fhir_validate import validate_bundle, validate_resource

        if doc["resourceType"] == "Bundle":
            validate_bundle(doc)
        else:
            validate_resource(doc)
    mappings = load_mappings(settings.mappings_dir)
    now = datetime.now(UTC)
    warnings: list[str] = []
    try:
        message = mappings.to_hl7(
            doc,
            control_id=now.strftime("E%Y%m%d%H%M%S%f"),
            timestamp=now,
            event=event,
            warnings=warnings,
        )
    except EngineError as exc:
        raise _located(exc, f"{name}: {exc.where}" if exc.where else name) from exc
    # ER7 ends segments with CR; on a terminal, show them one per line
    terminator = "\n" if sys.stdout.isatty() else "\r"
    sys.stdout.buffer.write(message.to_bytes(terminator))
    sys.stdout.flush()
    for text in warnings:
        _stderr(f"{name}: warning: {text}")


def _located(exc: EngineError, where: str) -> EngineError:
    """The same error, said of a file (and a place in it)."""
    located = EngineError(exc.message, where=where)
    located.code = exc.code
    return located


def _holds(doc: dict[str, Any], resource_type: str) -> bool:
    if doc.get("resourceType") == resource_type:
        return True
    return any(
        isinstance(e, dict) and e.get("resource", {}).get("resourceType") == resource_type
        for e in doc.get("entry", [])
    )


def run_golden(site_dir: Path | None, folder: Path, *, echo: Callable[[str], None]) -> int:
    """Convert every ``hl7/NAME.hl7`` under ``folder`` and compare with ``fhir/NAME.json``.

    Returns the number of pairs that differ (or failed to convert).
    """
    from engine.hl7v2.codec import parse_message
    from engine.mappings import load_mappings
    from engine.mappings.golden import differences

    mappings = load_mappings(site_dir)
    hl7_dir, fhir_dir = folder / "hl7", folder / "fhir"
    pairs = [
        (p, fhir_dir / f"{p.stem}.json")
        for p in sorted(hl7_dir.glob("*.hl7"))
        if (fhir_dir / f"{p.stem}.json").is_file()
    ]
    if not pairs:
        raise ConversionError(f"{folder}: no golden pairs (hl7/NAME.hl7 with fhir/NAME.json)")
    failed = 0
    for hl7_path, json_path in pairs:
        try:
            actual = mappings.to_fhir(parse_message(hl7_path.read_bytes()))
            expected = orjson.loads(json_path.read_bytes())
        except (EngineError, orjson.JSONDecodeError) as exc:
            failed += 1
            echo(f"FAIL {hl7_path.name}: {exc}")
            continue
        diff = differences(expected, actual)
        if diff:
            failed += 1
            echo(f"FAIL {hl7_path.name} vs {json_path.name}:")
            for line in diff[:50]:
                echo(f"  {line}")
            if len(diff) > 50:
                echo(f"  ... and {len(diff) - 50} more")
        else:
            echo(f"ok   {hl7_path.name}")
    echo(f"{len(pairs) - failed} of {len(pairs)} golden pairs agree")
    return failed
