"""The engine's log output holds no PHI: a delivery's lines, as ``configure_logging`` sets the
loggers up for ``engine serve``, never carry the MRN it looked a patient up by (httpx logs every
request's URL at INFO, and the patient search puts the MRN in the query string)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.logs import configure_logging
from engine.sim.athena import running_stub_athena
from tests.adapters.test_athena import CLIENT, SECRET, deliver_all, destination, payload


@pytest.fixture
def engine_logging() -> Iterator[None]:
    """configure_logging for the test, the root logger and the library loggers put back after."""
    root = logging.getLogger()
    names = ("httpx", "httpcore", "uvicorn.access", "alembic", "apscheduler")
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names})
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_deliverys_log_output_holds_no_mrn(
    engine_logging: None, capsys: pytest.CaptureFixture[str], tmp_path: Path, fmt: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with running_stub_athena(client_id=CLIENT, client_secret=SECRET) as athena:
        configure_logging("INFO", fmt)
        found, unknown = deliver_all(
            destination(athena, home), payload(1, mrn="DEMO1001"), payload(2, mrn="NOSUCH42")
        )
    assert found.ok, found
    assert unknown.needs_patient, unknown
    err = capsys.readouterr().err
    assert "DEMO1001" not in err
    assert "NOSUCH42" not in err
