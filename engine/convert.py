"""``engine convert`` and ``engine mappings test``: files in, FHIR or HL7v2 out.

One message in gives one Bundle (pretty JSON); several give NDJSON, one Bundle per line, with a
progress bar on stderr when stderr is a terminal. Bad input ends with one line naming the problem
(the message's position in the file and what is wrong).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
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

__all__ = ["convert_file", "run_golden"]


def convert_file(
    data: bytes,
    name: str,
    *,
    to: str | None,
    settings: Settings,
    jobs: int | None = None,
    event: str | None = None,
) -> None:
    """Convert one input file and write the result to stdout."""
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
        _hl7_to_fhir(data, name, settings, jobs)
        return
    if fmt == "x12":
        if target not in (None, "fhir"):
            raise ConversionError(f"{name}: X12 converts to FHIR only (--to fhir)")
        _x12_to_fhir(data, name, settings)
        return
    if target == "fhir":
        raise ConversionError(f"{name}: the input is already FHIR: say --to hl7v2 or --to x12")
    _fhir_to_hl7(data, name, target, settings, event)


def _x12_to_fhir(data: bytes, name: str, settings: Settings) -> None:
    """A 271 → a FHIR Bundle of CoverageEligibilityResponses (a TA1/999 → a clear error)."""
    from engine.x12.envelope import parse_interchanges
    from engine.x12.fhir import x271_to_fhir

    try:
        interchanges = parse_interchanges(data)
    except EngineError as exc:
        raise _located(exc, f"{name}: {exc.where}" if exc.where else name) from exc
    kinds = {tx.id for ic in interchanges for g in ic.groups for tx in g.transactions}
    if "271" not in kinds:
        what = ", ".join(sorted(kinds)) or "no transaction set (a TA1?)"
        raise ConversionError(f"{name}: X12 {what}: only a 271 converts to FHIR")
    try:
        bundle = x271_to_fhir(data)
    except EngineError as exc:
        raise _located(exc, f"{name}: {exc.where}" if exc.where else name) from exc
    if settings.validate_fhir:
        from engine.mappings.fhir_validate import validate_bundle

        validate_bundle(bundle)
    sys.stdout.buffer.write(orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n")


def _hl7_to_fhir(data: bytes, name: str, settings: Settings, jobs: int | None) -> None:
    from engine.hl7v2.codec import split_messages
    from engine.mappings import load_mappings

    global _WORKER
    pieces = [(line, raw) for line, raw in split_messages(data) if isinstance(raw, bytes)]
    if not pieces:
        raise ConversionError(f"{name}: no HL7v2 message found")
    _WORKER = _Converter(load_mappings(settings.mappings_dir), settings, pieces)
    # Bundles are trees of dicts without reference cycles, freed by reference counting; the
    # cyclic collector would only rescan the heap.
    gc.freeze()
    gc.disable()
    single = len(pieces) == 1
    out = sys.stdout.buffer
    progress = _progress(len(pieces)) if not single and sys.stderr.isatty() else None
    if jobs is None:
        jobs = min(os.cpu_count() or 1, 8) if len(pieces) >= _PARALLEL_FROM else 1
    spans = [(i, min(i + _CHUNK, len(pieces))) for i in range(0, len(pieces), _CHUNK)]
    pool = None
    results: Iterator[tuple[bytes, tuple[int, str, str] | None]]
    if jobs > 1 and len(spans) > 1:
        # fork: the workers inherit the compiled mappings and the messages; only spans go out.
        # Each worker writes its NDJSON to a file of its own and the parent copies the files to
        # stdout in order (no pickling of results through pipes).
        spool = tempfile.TemporaryDirectory(prefix="engine-convert-")
        assert _WORKER is not None
        _WORKER.spool = spool.name
        pool = multiprocessing.get_context("fork").Pool(jobs)
        results = pool.imap(_convert_span, spans)
    else:
        spool = None
        results = map(_convert_span, spans)
    try:
        done = 0
        for text, failure in results:
            if spool is not None:
                out.flush()
                chunk = Path(text.decode())
                with chunk.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                chunk.unlink()
            else:
                out.write(text)
            done += _CHUNK
            if progress is not None:
                progress(min(done, len(pieces)))
            if failure is not None:
                index, kind, message = failure
                line = pieces[index][0]
                where = name if single else f"{name}: message {index + 1} (line {line})"
                raise _ERRORS.get(kind, EngineError)(message, where=where)
    finally:
        if pool is not None:
            pool.terminate()
        if spool is not None:
            spool.cleanup()
        out.flush()
        if progress is not None:
            progress(-1)


#: files with at least this many messages are converted by one process per core
_PARALLEL_FROM = 2000
_CHUNK = 250
_WORKER: _Converter | None = None


class _Converter:
    def __init__(self, mappings: Any, settings: Settings, pieces: list[tuple[int, bytes]]) -> None:
        self.mappings = mappings
        self.settings = settings
        self.pieces = pieces
        #: in a worker process: the directory its NDJSON files go to
        self.spool: str | None = None
        self.validate: Callable[[dict[str, Any]], None] | None = None
        if settings.validate_fhir:
            from engine.mappings.fhir_validate import validate_bundle

            self.validate = validate_bundle


def _convert_span(span: tuple[int, int]) -> tuple[bytes, tuple[int, str, str] | None]:
    """Convert a run of messages: their NDJSON (or pretty JSON for a lone message), and the first
    failure as (index, error class name, message)."""
    from engine.hl7v2.codec import parse_message

    start, end = span
    conv = _WORKER
    assert conv is not None
    chunk = conv.pieces[start:end]
    lines: list[bytes] = []
    option = orjson.OPT_INDENT_2 if start == 0 and len(chunk) == 1 else 0
    for offset, (_line, raw) in enumerate(chunk):
        try:
            message = parse_message(raw, default_charset=conv.settings.default_charset)
            bundle = conv.mappings.to_fhir(message)
            if conv.validate is not None:
                conv.validate(bundle)
        except EngineError as exc:
            return _emit(conv, start, lines), (start + offset, type(exc).__name__, str(exc))
        lines.append(orjson.dumps(bundle, option=option) + b"\n")
    return _emit(conv, start, lines), None


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


def _progress(total: int) -> Callable[[int], None]:
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("converting", total=total)
    bar.start()

    def step(n: int) -> None:
        if n < 0:
            bar.stop()
        elif n % 200 == 0 or n == total:
            bar.update(task, completed=n)

    return step


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
        from datetime import UTC, datetime

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
    try:
        message = mappings.to_hl7(
            doc, control_id=now.strftime("E%Y%m%d%H%M%S%f"), timestamp=now, event=event
        )
    except EngineError as exc:
        raise _located(exc, f"{name}: {exc.where}" if exc.where else name) from exc
    # ER7 ends segments with CR; on a terminal, show them one per line
    terminator = "\n" if sys.stdout.isatty() else "\r"
    sys.stdout.buffer.write(message.to_bytes(terminator))
    sys.stdout.flush()


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
