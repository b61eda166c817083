"""Fixtures of the adapter tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapters.test_mllp_tls import _cert


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A test CA, a server certificate for localhost and a client one signed by it, and a
    stranger's certificate signed by another CA (each as NAME.crt and NAME.key)."""
    ca = _cert(tmp_path / "ca", "test-ca", None)
    _cert(tmp_path / "server", "localhost", ca)
    _cert(tmp_path / "client", "ehr-client", ca)
    _cert(tmp_path / "stranger", "stranger", _cert(tmp_path / "other-ca", "other", None))
    return tmp_path
