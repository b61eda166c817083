"""TLS for the MLLP listener: server certificate, and client certificates for mutual TLS.

MLLP itself has no security (HL7 v2.5.1 appendix C); over a network it runs inside TLS. Only
TLS 1.2 and newer are accepted.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from engine.errors import ConfigError

__all__ = ["server_context"]


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context; with ``client_ca`` every client must present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            ctx.load_verify_locations(cafile=str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"MLLP TLS: cannot load certificate or key ({exc})") from exc
    return ctx
