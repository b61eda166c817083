"""Seed corpora: real files from the repository, and the shared conformance files when present.

The shared files under ``/work/shared/conformance`` (``ENGINE_CONFORMANCE_DIR``) are read when the
campaign runs, never copied into the repository. Seeds are read once per process and kept in
memory (a few MB in all); the largest are cut to :data:`MAX_SEED_BYTES` so one input stays
quick to mutate.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

__all__ = [
    "MAX_SEED_BYTES",
    "REPO",
    "conformance_dir",
    "er7_seeds",
    "fhir_seeds",
    "mapping_seeds",
    "route_seeds",
    "x12_seeds",
]

REPO = Path(__file__).resolve().parent.parent
MAX_SEED_BYTES = 64 * 1024


def conformance_dir() -> Path:
    """The shared conformance files (``../shared/conformance`` beside the checkout)."""
    env = os.environ.get("ENGINE_CONFORMANCE_DIR")
    return Path(env) if env else REPO.parent / "shared" / "conformance"


def _read(paths: list[Path]) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for p in sorted(set(paths)):
        if p.is_file():
            data = p.read_bytes()[:MAX_SEED_BYTES]
            if data:
                out.append(data)
    return tuple(out)


def _glob(root: Path, *patterns: str) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for pattern in patterns for p in root.glob(pattern)]


@lru_cache(maxsize=1)
def er7_seeds() -> tuple[bytes, ...]:
    """HL7v2 messages and batch files: tests/corpus, fixtures, the FHIR-Converter samples."""
    return _read(
        _glob(REPO / "tests" / "corpus" / "hl7v2", "**/*.hl7")
        + _glob(REPO / "fixtures" / "hl7", "*.hl7")
        + _glob(conformance_dir() / "fhir-converter" / "hl7v2", "**/*.hl7")
    )


@lru_cache(maxsize=1)
def x12_seeds() -> tuple[bytes, ...]:
    """X12 interchanges (270, 271, TA1, 999 and others the corpus holds)."""
    return _read(
        _glob(REPO / "tests" / "corpus" / "x12", "**/*.x12")
        + _glob(REPO / "fixtures" / "x12", "*.x12")
        + _glob(conformance_dir() / "x12", "**/*.270", "**/*.271", "**/*.x12", "*/2*.txt")
    )


@lru_cache(maxsize=1)
def fhir_seeds() -> tuple[bytes, ...]:
    """FHIR JSON the outbound path takes (Patient, Appointment, Coverage, Claim, Bundle)."""
    return _read(
        _glob(REPO / "fixtures" / "fhir", "*.json")
        + _glob(REPO / "tests" / "corpus" / "fhir", "**/*.json")
        + _glob(conformance_dir() / "fhir-converter" / "expected", "*.json")
    )


_YAML_BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)


def _doc_blocks(name: str) -> list[bytes]:
    path = REPO / "docs" / name
    if not path.is_file():
        return []
    return [m.group(1).encode() for m in _YAML_BLOCK.finditer(path.read_text("utf-8"))]


@lru_cache(maxsize=1)
def route_seeds() -> tuple[bytes, ...]:
    """Route files: the built-in and simulator ones, and the examples in docs/ROUTES.md."""
    files = [
        p
        for p in _glob(REPO / "engine" / "routes" / "specs", "*.yaml")
        + _glob(REPO / "engine" / "sim" / "routes", "*.yaml")
        if p.name != "alerts.yaml"
    ]
    return _read(files) + tuple(_doc_blocks("ROUTES.md"))


@lru_cache(maxsize=1)
def mapping_seeds() -> tuple[tuple[str, bytes], ...]:
    """(path under the mapping directory, text) of every built-in mapping file."""
    root = REPO / "engine" / "mappings" / "specs"
    out = []
    for p in sorted(root.rglob("*.yaml")):
        out.append((p.relative_to(root).as_posix(), p.read_bytes()))
    return tuple(out)
