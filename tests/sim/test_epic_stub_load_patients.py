"""The stub Epic's synthetic load patients (``engine stub-epic --load-patients N``): the
document benches spread their uploads over them, as a clinic's day spreads over its patients."""

from __future__ import annotations

from engine.sim.epic import create_stub_epic_app
from engine.sim.epic_fhir import MRN_SYSTEM, load_mrn


def _patients_with(app_state: object, mrn: str) -> int:
    resources = app_state.fhir.resources.get("Patient", {})  # type: ignore[attr-defined]
    return sum(
        1
        for p in resources.values()
        if any(
            i.get("system") == MRN_SYSTEM and i.get("value") == mrn for i in p.get("identifier", [])
        )
    )


def test_load_patients_are_seeded_beside_the_demo_ones() -> None:
    app = create_stub_epic_app(load_patients=3)
    state = app.state.epic
    assert [load_mrn(n) for n in (1, 3)] == ["LOAD00001", "LOAD00003"]
    assert all(_patients_with(state, load_mrn(n)) == 1 for n in (1, 2, 3))
    assert _patients_with(state, load_mrn(4)) == 0
    assert _patients_with(state, "DEMO1001") == 1


def test_none_by_default() -> None:
    state = create_stub_epic_app().state.epic
    assert _patients_with(state, load_mrn(1)) == 0
