"""A practice's EHR for the pull tests: the stub FHIR server (real HTTP) holding booked
appointments, their patients, coverages and payers, written through its REST API.

The patient is the stub payer's roster member TESTPATIENT, ALICE (member XQZ123456789, active
PPO, copay 25.00, deductible remaining 650.00), so an eligibility check of a pulled appointment
gets a real verdict."""

from __future__ import annotations

from datetime import date
from typing import Any

import httpx

MRN_SYSTEM = "urn:oid:1.2.3.4.5"


def put(client: httpx.Client, resource: dict[str, Any]) -> dict[str, Any]:
    """Write one resource by id (``PUT Type/id``) and return it as stored (with its version)."""
    resp = client.put(f"{resource['resourceType']}/{resource['id']}", json=resource)
    assert resp.status_code in (200, 201), resp.text
    stored: dict[str, Any] = resp.json()
    return stored


def appointment(aid: str, patient: str, day: date, hour: int = 9, **kw: Any) -> dict[str, Any]:
    """A booked appointment of ``patient`` (an id) at ``hour``:00 New York time on ``day``."""
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": kw.pop("status", "booked"),
        "identifier": [{"system": "urn:oid:1.2.3.4.6", "value": f"APT-{aid}"}],
        "start": f"{day.isoformat()}T{hour:02d}:00:00-05:00",
        "end": f"{day.isoformat()}T{hour:02d}:30:00-05:00",
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/dr1"}, "status": "accepted"},
        ],
        **kw,
    }


def seed_alice(client: httpx.Client, day: date, *, aid: str = "a1") -> None:
    """Alice, her active coverage with payer 60054, and an appointment on ``day`` at 9:00."""
    put(
        client,
        {
            "resourceType": "Organization",
            "id": "payer1",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.221.5", "value": "60054"}],
            "name": "WESTPEAK HEALTH",
        },
    )
    put(
        client,
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [
                {
                    "system": MRN_SYSTEM,
                    "value": "MRN0001",
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR",
                            }
                        ]
                    },
                }
            ],
            "name": [{"family": "TESTPATIENT", "given": ["ALICE"]}],
            "gender": "female",
            "birthDate": "1984-02-29",
        },
    )
    put(
        client,
        {
            "resourceType": "Coverage",
            "id": "c1",
            "status": "active",
            "identifier": [{"system": "urn:oid:1.2.3.4.7", "value": "COV-1"}],
            "subscriberId": "XQZ123456789",
            "beneficiary": {"reference": "Patient/p1"},
            "payor": [{"reference": "Organization/payer1"}],
        },
    )
    put(client, appointment(aid, "p1", day))


def seed_many(client: httpx.Client, day: date, n: int, *, first: int = 0) -> None:
    """``n`` patients with one appointment each on ``day`` (no coverage), numbered from
    ``first``."""
    for i in range(first, first + n):
        put(
            client,
            {
                "resourceType": "Patient",
                "id": f"m{i}",
                "identifier": [{"system": MRN_SYSTEM, "value": f"MANY{i:04d}"}],
                "name": [{"family": f"SYNTH{i}", "given": ["PAT"]}],
            },
        )
        put(client, appointment(f"ma{i}", f"m{i}", day, hour=8 + i % 9))
