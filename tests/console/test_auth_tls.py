"""HTTPS on the HTTP port: a real ``engine serve`` with ENGINE_HTTP_TLS_CERT/_KEY (a self-signed
certificate made here) answers the API and the console over TLS only, with HSTS, and the
console's session cookie is Secure; a key that does not fit its certificate stops start-up."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engine.errors import ConfigError
from engine.service import _http_tls
from engine.settings import Settings
from tests.console.support import console_engine

PASSWORD = "correct horse battery"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files in ``folder``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "http.crt", folder / "http.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_engine_serve_answers_https_with_hsts_and_a_secure_cookie(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = {"ENGINE_HTTP_TLS_CERT": str(cert), "ENGINE_HTTP_TLS_KEY": str(key)}
    with console_engine(tmp_path, env=env) as engine:
        assert engine.base_url.startswith("https://")
        engine.add_user("ada", PASSWORD, "admin")
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=engine.base_url, verify=trust) as client:
            health = client.get("/healthz")
            assert health.status_code == 200
            assert health.headers["strict-transport-security"] == "max-age=31536000"
            page = client.get("/console/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            answer = client.post(
                "/console/login",
                data={"username": "ada", "password": PASSWORD, "csrf_token": token[1]},
                follow_redirects=False,
            )
            assert answer.status_code == 303
            session = [v for k, v in answer.headers.multi_items() if k == "set-cookie"][0]
            assert session.startswith("engine_session=") and "Secure" in session
            users = client.get("/console/users")
            assert users.status_code == 200 and "ada" in users.text
        # the same port refuses plain HTTP: nothing there speaks it
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{engine.http}/healthz", timeout=5)


def test_a_key_that_does_not_fit_its_certificate_stops_start_up(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = self_signed(other)
    settings = Settings(var_dir=tmp_path, http_tls_cert=cert, http_tls_key=wrong_key)
    with pytest.raises(ConfigError, match="ENGINE_HTTP_TLS_CERT/ENGINE_HTTP_TLS_KEY"):
        _http_tls(settings)
    with pytest.raises(ConfigError, match="needs both"):
        _http_tls(Settings(var_dir=tmp_path, http_tls_cert=cert))
    assert _http_tls(Settings(var_dir=tmp_path)) == (None, None)


def test_engine_serve_with_half_a_tls_pair_says_so(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text("routes: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--mllp-port", "0", "--http-port", "0"],
        env={
            "PATH": "/usr/bin:/bin",
            "ENGINE_HOME": str(tmp_path),
            "ENGINE_ROUTES_DIR": str(routes),
            "ENGINE_HTTP_TLS_CERT": str(cert),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ENGINE_HTTP_TLS_CERT and ENGINE_HTTP_TLS_KEY" in done.stderr
