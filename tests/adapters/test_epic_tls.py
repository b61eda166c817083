"""TLS to Epic: the system trust store (truststore) unless a private CA is named, and an
optional client certificate; a certificate that cannot be read stops the build naming it."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import truststore

from engine.adapters.epic import EpicDestination, EpicDocumentDestination, EpicTls, ssl_context
from engine.errors import ConfigError

MRN = "urn:oid:1.2.840.114350.1.13.99999.2.7.5.737384.14"


def test_the_system_trust_store_by_default() -> None:
    ctx = ssl_context(None)
    assert isinstance(ctx, truststore.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_a_private_ca_and_a_client_certificate(pki: Path) -> None:
    tls = EpicTls(
        ca_file=pki / "ca.crt", client_cert=pki / "client.crt", client_key=pki / "client.key"
    )
    ctx = ssl_context(tls)
    assert not isinstance(ctx, truststore.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.get_ca_certs()  # the private CA loaded


def test_an_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    config = EpicDestination.model_validate(
        {
            "base_url": "https://epic.example.org/api/FHIR/R4",
            "client_id": "c",
            "mrn_system": MRN,
            "tls": {"client_cert": str(tmp_path / "missing.crt")},
        }
    )
    with pytest.raises(ConfigError, match="epic tls"):
        EpicDocumentDestination("epic", config)
