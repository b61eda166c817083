"""The pull-source contract: what a scheduled pull reads from an EHR (the EIP Polling Consumer).

Many practices cannot get an HL7 feed from their EHR. A :class:`Source` (a route file's
``sources.<name>``: ``type: epic`` or ``type: athenahealth``) reads the booked appointments of
the next days, with their patients and coverages, as FHIR R4 resources; the pull job
(engine/jobs/pull.py) stores each as a message (kind ``fhir``, channel ``pull``), deduplicated
by :attr:`Pulled.version_key`, and the pipeline routes and maps it as if it had been pushed, so
the eligibility checks run for practices with no interface at all.

A source raises :class:`SourceError` (PHI-free: a status, an OAuth error, the page it stopped
at) when the EHR cannot be read; it follows pagination to the end and obeys 429 Retry-After.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

__all__ = ["Pulled", "Source", "SourceError"]


class SourceError(Exception):
    """A pull that could not finish (PHI-free message)."""


@dataclass(frozen=True)
class Pulled:
    """One appointment as pulled: a FHIR transaction Bundle with the Appointment, its Patient and
    the patient's Coverages (each with an identifier the engine's index keys on).

    ``version_key``: the same for the same version of the same appointment (the EHR's id and
    ``meta.versionId`` or ``meta.lastUpdated``, or a hash of the content when it has neither),
    so pulling an unchanged appointment again stores nothing new.
    """

    version_key: str
    bundle: dict[str, Any]

    def __repr__(self) -> str:  # no bundle: PHI-safe
        return f"<Pulled {self.version_key}>"


class Source(Protocol):
    """A scheduled pull from one EHR tenant."""

    name: str

    def pull(self, start: date, end: date) -> AsyncIterator[Pulled]:
        """The appointments booked from ``start`` to ``end`` (inclusive), every page of them."""
        ...

    async def close(self) -> None: ...
