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
    """A server context; with ``client_ca`` every client must present a certificate it signed.

    Raises :class:`ConfigError` naming the setting (``ENGINE_MLLP_TLS_CERT``, ``_KEY``,
    ``_CLIENT_CA``) and the file that cannot be loaded, and why."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # OpenSSL loads certificate and key in one call and its error does not say which file it
    # was: the certificate is read alone first, so a bad key is the key's fault
    _certificates("ENGINE_MLLP_TLS_CERT", cert, "certificate")

    def password() -> bytes:  # never OpenSSL's prompt on the terminal of a service
        raise ConfigError(
            f"ENGINE_MLLP_TLS_KEY: {key}: the MLLP TLS private key is protected by a password; "
            "give it without one (and readable only by the engine)"
        )

    try:
        ctx.load_cert_chain(str(cert), str(key), password=password)
    except (OSError, ssl.SSLError) as exc:
        if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
            why = f"it does not match the certificate in ENGINE_MLLP_TLS_CERT ({cert})"
        else:
            why = _why(exc, "not a PEM private key")
        raise ConfigError(
            f"ENGINE_MLLP_TLS_KEY: {key}: cannot load the MLLP TLS private key ({why})"
        ) from exc
    if client_ca is not None:
        _certificates("ENGINE_MLLP_TLS_CLIENT_CA", client_ca, "client CA certificates", ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _certificates(setting: str, path: Path, what: str, ctx: ssl.SSLContext | None = None) -> None:
    """Load the PEM certificates in ``path`` as trusted into ``ctx`` (a scratch context: only
    checked), or raise :class:`ConfigError` naming ``setting`` and ``path``."""
    try:
        (ctx or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)).load_verify_locations(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        why = _why(exc, "not a PEM certificate")
        raise ConfigError(f"{setting}: {path}: cannot load the MLLP TLS {what} ({why})") from exc


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


def _why(exc: BaseException, unreadable: str | None = None) -> str:
    """What OpenSSL or the OS says, without the errno noise: ``PEM lib``, ``No such file``;
    ``unreadable`` instead when OpenSSL found nothing it could read in the file."""
    if isinstance(exc, ssl.SSLError):
        found_nothing = exc.reason in (None, "NO_CERTIFICATE_OR_CRL_FOUND") or "PEM lib" in str(exc)
        if unreadable is not None and found_nothing:
            return unreadable
        if exc.reason:
            return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
