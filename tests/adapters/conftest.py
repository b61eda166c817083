"""Fixtures of the adapter tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.adapters.destination import Payload
from tests.adapters.test_mllp_tls import _cert


def bundle_payload(body: bytes, n: int, destination: str, control: str) -> Payload:
    """Message ``n``'s FHIR Bundle for ``destination``, with an idempotency key of its own
    (a stub replays the answer to a key it saw)."""
    return Payload(
        message_id=n,
        destination=destination,
        kind="fhir-bundle",
        body=body,
        content_type="application/fhir+json",
        idempotency_key=f"{n}:{destination}",
        control_id=f"{control}-{n}",
    )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A test CA, a server certificate for localhost and a client one signed by it, and a
    stranger's certificate signed by another CA (each as NAME.crt and NAME.key)."""
    ca = _cert(tmp_path / "ca", "test-ca", None)
    _cert(tmp_path / "server", "localhost", ca)
    _cert(tmp_path / "client", "ehr-client", ca)
    _cert(tmp_path / "stranger", "stranger", _cert(tmp_path / "other-ca", "other", None))
    return tmp_path
