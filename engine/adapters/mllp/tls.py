"""TLS for MLLP, both ways: the listener's certificate (and its clients', for mutual TLS), and the
sender's trust (a CA bundle) and client certificate.

MLLP itself has no security (HL7 v2.5.1 appendix C); over a network it runs inside TLS. Only
TLS 1.2 and newer are accepted, in either direction.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from engine.errors import ConfigError

__all__ = ["client_context", "server_context"]


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


def client_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    *,
    verify: bool = True,
) -> ssl.SSLContext:
    """A sender's context: the receiver's certificate checked against ``ca_file`` (else the
    system's CAs) and its host name, unless ``verify`` is false; with ``cert_file`` and
    ``key_file``, a client certificate for a receiver that asks for one (mutual TLS).

    Raises :class:`ConfigError` naming the file that cannot be loaded."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA bundle {ca_file} ({_why(exc)})") from exc
    if cert_file is not None:
        try:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate {cert_file} with key {key_file} ({_why(exc)})"
            ) from exc
    return ctx


def _why(exc: BaseException) -> str:
    """What OpenSSL or the OS says, without the errno noise: ``PEM lib``, ``No such file``."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
