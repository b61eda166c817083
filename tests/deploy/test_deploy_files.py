"""The files in deploy/ say what the engine really does: the commands they run are the CLI's,
the ports are the settings' defaults, every ENGINE_* name is a setting the engine reads, the
secrets are files, the readiness path is the API's, the Dockerfile installs the way the Makefile
does and the package it installs holds every file the engine reads at run time.

These machines run no Docker engine: the image is never built here. ``docker compose config``
(or docker-compose's) checks the compose file when a client that has it is installed;
``systemd-analyze verify`` the unit when systemd's is; ``haproxy -c`` the balancer's file.
"""

from __future__ import annotations

import configparser
import glob
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import typer.main
import yaml

from engine.api.auth_settings import AuthSettings
from engine.cli import app
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: variables that are not the engine's but that it (libpq, under it) reads
NOT_ENGINE = {"PGPASSFILE"}


def setting_names() -> set[str]:
    names = {f"ENGINE_{name.upper()}" for name in Settings.model_fields}
    for name, info in AuthSettings.model_fields.items():
        alias = info.validation_alias
        names.add(alias.upper() if isinstance(alias, str) else f"ENGINE_AUTH_{name.upper()}")
    return names


def cli_commands() -> set[str]:
    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "engine.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == "'":  # as systemd reads it
                value = value[1:-1]
            values[key.strip()] = value
    return values


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "engine.service").read_text())
    return parser


def compose() -> dict[str, object]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_env_example_names_only_real_settings_and_no_secret() -> None:
    values = env_example()
    unknown = set(values) - setting_names() - NOT_ENGINE
    assert unknown == set(), f"not settings the engine reads: {sorted(unknown)}"
    for key, value in values.items():
        if re.search(r"SECRET|PASSWORD|TOKEN|_KEY\b|KEY_FILE", key):  # a file's path, or unset
            assert value == "" or value.startswith("/"), key
        assert "secret" not in value.lower() or value.startswith("/"), key
    # the URL carries no password: libpq reads it from PGPASSFILE
    assert (
        "@" in values["ENGINE_DATABASE_URL"]
        and ":" not in values["ENGINE_DATABASE_URL"].split("//")[1].split("@")[0]
    )


def test_the_env_example_is_accepted_by_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every value typed as the settings type it: the example parses (the folders it names
    exist only on a real host, so home and var are this test's)."""
    for key, value in env_example().items():
        if value:
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGINE_VAR_DIR", str(tmp_path / "var"))
    settings = Settings()
    assert settings.mllp_port == 2575 and settings.http_port == 8080
    assert settings.oidc_role_map == {"engine-admins": "admin", "front-desk": "viewer"}
    auth = AuthSettings()
    assert auth.environment == "production" and auth.mode.value == "jwks"


def test_the_unit_runs_engine_serve_hardened() -> None:
    service = unit()["Service"]
    command = service["ExecStart"].split()
    assert Path(command[0]).name == "engine" and command[1:] == ["serve"]
    assert command[1] in cli_commands()
    assert service["User"] == "engine" and service["User"] != "root"
    assert service["EnvironmentFile"] == "/etc/engine/engine.env"
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= 4096
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert "-HUP" in service["ExecReload"]  # SIGHUP reloads (engine/service.py)
    # everything the engine writes is under ReadWritePaths (ProtectSystem=strict)
    writable = [Path(p) for p in service["ReadWritePaths"].split()]
    values = env_example()
    for key in ("ENGINE_HOME", "ENGINE_VAR_DIR", "ENGINE_DOCUMENTS_INBOX"):
        path = Path(values[key])
        assert any(path == w or w in path.parents for w in writable), key
    assert Path(service["WorkingDirectory"]) == Path(values["ENGINE_HOME"])


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed")
    engine = Path(os.__file__).parents[2] / "bin" / "engine"
    engine = engine if engine.exists() else Path(shutil.which("engine") or "/bin/true")
    text = (DEPLOY / "engine.service").read_text()
    copy = tmp_path / "engine.service"
    copy.write_text(text.replace("/opt/engine/venv/bin/engine", str(engine)))
    done = subprocess.run([verify, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "engine.service" in line and "EnvironmentFile" not in line
    ]
    assert done.returncode == 0 and problems == [], done.stdout + done.stderr


def test_compose_runs_two_nodes_on_one_postgres_behind_haproxy() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    assert {"db", "engine1", "engine2", "haproxy"} <= set(services)
    names = setting_names()
    for node in ("engine1", "engine2"):
        spec = services[node]
        assert spec["command"][0] in cli_commands() and spec["command"] == ["serve"]
        env = spec["environment"]
        assert set(env) - names - NOT_ENGINE == set(), node
        assert env["ENGINE_DATABASE_URL"].startswith("postgresql://")
        assert ":" not in env["ENGINE_DATABASE_URL"].split("//")[1].split("@")[0]  # no password
        assert {"pgpass", "console-secret", "audit-key"} <= set(spec["secrets"])
        assert env["ENGINE_CONSOLE_SECRET_FILE"] == "/run/secrets/console-secret"
        assert env["ENGINE_AUDIT_KEY_FILE"] == "/run/secrets/audit-key"  # one key for both
        assert env["PGPASSFILE"] == "/run/secrets/pgpass"
    # one database for both, each its own var volume
    assert services["engine1"]["environment"] == services["engine2"]["environment"]
    assert services["engine1"]["volumes"][0] != services["engine2"]["volumes"][0]
    # HAProxy publishes what its file binds, and reads the file compose mounts
    proxy = services["haproxy"]
    assert set(proxy["ports"]) == {"2575:2575", "8080:8080"}
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]
    assert services["engine1"]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_haproxy_balances_the_ports_the_engine_listens_on() -> None:
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    defaults = Settings.model_fields
    mllp, http = defaults["mllp_port"].default, defaults["http_port"].default
    assert f"bind :{mllp}" in cfg and f"bind :{http}" in cfg
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)(.*)$", cfg, re.MULTILINE)
    assert {(name, host) for name, host, _, _ in servers} == {
        ("engine1", "engine1"),
        ("engine2", "engine2"),
    }
    services = compose()["services"]
    assert isinstance(services, dict)
    assert all(host in services for _, host, _, _ in servers)
    for _name, _host, port, rest in servers:
        assert int(port) in (mllp, http)
        assert "check" in rest and (int(port) == http or f"port {http}" in rest)
    # the health check asks the API's readiness endpoint
    uris = set(re.findall(r"http-check send meth GET uri (\S+)", cfg))
    api = (ROOT / "engine" / "api" / "app.py").read_text()
    assert uris == {"/readyz"} and '@app.get("/readyz")' in api
    assert "balance leastconn" in cfg and "mode tcp" in cfg


def test_haproxy_accepts_its_file(tmp_path: Path) -> None:
    binary = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
    )
    if binary is None:
        pytest.skip("haproxy is not installed (.ci/run installs Debian's package)")
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    copy = tmp_path / "haproxy.cfg"
    copy.write_text(re.sub(r"\bengine([12]):", r"127.0.0.\1:", cfg))  # no DNS here
    done = subprocess.run([binary, "-c", "-f", str(copy)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_installs_like_the_makefile_and_runs_as_a_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    make = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --disable-pip-version-check -c constraints.txt -e" in make
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", text)
    base = next(line for line in lines if line.startswith("FROM "))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = re.search(r">=(\d+\.\d+)", project["requires-python"])
    assert wanted and base == f"FROM python:{wanted[1]}-slim"
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    for line in lines:  # what it copies exists
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    # the build context (the repository root) lets in only what it copies
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    copied = {s for line in lines if line.startswith("COPY ") for s in line.split()[1:-1]}
    assert copied == {line[1:] for line in ignore if line.startswith("!")}
    defaults = Settings.model_fields
    exposed = next(line for line in lines if line.startswith("EXPOSE ")).split()[1:]
    assert exposed == [str(defaults["mllp_port"].default), str(defaults["http_port"].default)]
    assert 'ENTRYPOINT ["engine"]' in lines and 'CMD ["serve"]' in lines
    assert "/readyz" in text
    assert project["scripts"]["engine"] == "engine.cli:main"


def test_the_package_holds_every_file_the_engine_reads() -> None:
    """``pip install .`` (the Dockerfile's, not editable) ships only the package data that
    pyproject.toml names: every non-Python file under engine/ must match one of its patterns
    (the console's templates were missing: the console of an installed engine had no pages)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["engine"]
    package = ROOT / "engine"
    shipped = {
        Path(found) for pattern in patterns for found in glob.glob(pattern, root_dir=package)
    }
    files = {
        path.relative_to(package)
        for path in package.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert sorted(map(str, files - shipped)) == []


def test_compose_config_with_a_compose_client(tmp_path: Path) -> None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        command = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        command = ["docker-compose"]
    else:
        pytest.skip("no compose client (docker compose or docker-compose) is installed")
    folder = tmp_path / "deploy"
    shutil.copytree(DEPLOY, folder)
    (folder / "secrets").mkdir()
    for name in ("db-password", "pgpass", "console-secret", "audit-key"):
        (folder / "secrets" / name).write_text("")
    (folder / "routes").mkdir()
    done = subprocess.run(
        [*command, "-f", str(folder / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
    )
    assert done.returncode == 0, done.stdout + done.stderr
