"""Payer files: the built-in default, site layering, and errors naming file, line and key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.adapters.auth import OAuth2Auth
from engine.adapters.payer import PayerConfig, load_payers
from engine.adapters.payer.config import default_payers_file
from engine.adapters.payer.registry import build_payer
from engine.adapters.payer.x12_http import X12HttpPayer
from engine.errors import ConfigError
from engine.sim.payer.roster import load_roster
from engine.sim.payer.stub import StubPayer


def write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


def test_builtin_default_is_the_in_process_stub() -> None:
    payers = load_payers()
    assert payers.payers == {}
    assert payers.default is not None and payers.default.adapter == "stub"
    assert payers.origin == {"default": "(built-in) payers.yaml"}
    config = payers.config_for("ANY-SYNTHETIC-ID")
    assert config is payers.default
    assert config.timeout_s == 20 and config.max_concurrency == 4 and config.verify_tls
    assert (config.retry.max_attempts, config.retry.base_delay_s) == (3, 5)
    adapter = build_payer("ANY-SYNTHETIC-ID", config)
    assert isinstance(adapter, StubPayer) and adapter.name == "ANY-SYNTHETIC-ID"
    asyncio.run(adapter.close())


SITE = """\
payers:
  60054:
    name: WESTPEAK HEALTH
    adapter: x12-http
    url: https://clearinghouse.example/core/realtime
    auth: {type: oauth2, token_url: "https://clearinghouse.example/oauth2/token",
           client_id: oak-clinic, client_secret_env: CLEARINGHOUSE_SECRET}
    sender_id: OAKCLINIC
    receiver_id: CLEARHOUSE
    max_concurrency: 2
    timeout_s: 15
    retry: {max_attempts: 5, base_delay_s: 1, max_delay_s: 30}
  LOCALSTUB:
    adapter: stub
    roster: rosters/small.yaml
    latency_ms: 10
"""


def test_site_file_adds_payers_and_keeps_the_builtin_default(tmp_path: Path) -> None:
    write(tmp_path, "clearinghouse.yaml", SITE)
    payers = load_payers(tmp_path)
    assert payers.default is not None  # the built-in payers.yaml still applies
    assert set(payers.payers) == {"60054", "LOCALSTUB"}  # a numeric payer ID is text
    real = payers.payers["60054"]
    assert real.adapter == "x12-http" and real.envelope == "core" and real.verify_tls
    assert (
        isinstance(real.auth, OAuth2Auth) and real.auth.client_secret_env == "CLEARINGHOUSE_SECRET"
    )
    assert (real.max_concurrency, real.timeout_s, real.retry.max_attempts) == (2, 15, 5)
    # a roster path is relative to the file that names it
    assert payers.payers["LOCALSTUB"].roster == tmp_path / "rosters" / "small.yaml"
    assert payers.origin["payer:60054"] == f"{tmp_path}/clearinghouse.yaml"
    assert payers.config_for("60054") is real
    assert payers.config_for("OTHER") is payers.default


def test_site_file_of_the_same_name_replaces_the_builtin(tmp_path: Path) -> None:
    write(tmp_path, "payers.yaml", "payers:\n  SYNPAY: {adapter: stub}\n")
    payers = load_payers(tmp_path)
    assert payers.default is None and payers.config_for("OTHER") is None
    assert list(payers.payers) == ["SYNPAY"]


def test_x12_http_adapter_is_built_and_needs_its_secret(tmp_path: Path) -> None:
    write(tmp_path, "clearinghouse.yaml", SITE)
    config = load_payers(tmp_path).payers["60054"]
    with pytest.raises(ConfigError, match="CLEARINGHOUSE_SECRET is not set"):
        X12HttpPayer("60054", config, environ={})
    adapter = X12HttpPayer("60054", config, environ={"CLEARINGHOUSE_SECRET": "s3cret"})
    assert adapter.auth is not None and adapter.url.startswith("https://")


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("payers:\n  P1:\n    adapter: soap\n", 3, "payers.P1.adapter", "'stub' or 'x12-http'"),
        ("payers:\n  P1:\n    adapter: x12-http\n", 2, "payers.P1", "needs a url"),
        (
            "payers:\n  P1:\n    adapter: x12-http\n    url: http://payer.example/rt\n",
            4,
            "payers.P1.url",
            "plain http is only for a stub on this machine",
        ),
        (
            "payers:\n  P1:\n    adapter: x12-http\n    url: https://p.example\n"
            "    auth: {type: oauth2, token_url: 'https://p.example/t', client_id: c,\n"
            "           client_secret: hunter2}\n",
            6,
            "payers.P1.auth.client_secret",
            "a secret never goes in a payer file",
        ),
        ("default:\n  timeout_s: 0\n", 2, "default.timeout_s", "greater than 0"),
        (
            "payers:\n  P1:\n    roster: r.yaml\n    max_concurrency: 0\n",
            4,
            "payers.P1.max_concurrency",
            "greater than or equal to 1",
        ),
        ("payers:\n  'P*1': {}\n", 1, "payers", "without an X12 delimiter"),
        (
            "payers:\n  P1:\n    adapter: x12-http\n    url: https://p.example\n"
            "    latency_ms: 5\n",
            2,
            "payers.P1",
            "latency_ms apply to the stub adapter only",
        ),
    ],
)
def test_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    write(tmp_path, "site.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_payers(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}/site.yaml, line {line}, {key}: ")
    assert message in str(err.value)


def test_a_payer_or_the_default_defined_twice_names_both_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "payers:\n  P1: {}\n")
    write(tmp_path, "b.yaml", "payers:\n  P1: {}\n")
    with pytest.raises(
        ConfigError, match=r"b\.yaml, payers\.P1: payer 'P1' is already defined in .*a\.yaml"
    ):
        load_payers(tmp_path)
    site = tmp_path / "other"
    write(site, "more.yaml", "default: {adapter: stub}\n")
    with pytest.raises(
        ConfigError, match=r"more\.yaml, default: .* already set in \(built-in\) payers\.yaml"
    ):
        load_payers(site)


def test_invalid_yaml_and_a_missing_directory(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", "payers:\n  P1: {adapter: stub\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 2: not valid YAML"):
        load_payers(tmp_path)
    with pytest.raises(ConfigError, match="payers directory not found"):
        load_payers(tmp_path / "nowhere")


def test_builtin_file_can_be_swapped_for_tests(tmp_path: Path) -> None:
    builtin = write(tmp_path, "payers.yaml", "payers:\n  ONLY: {}\n")
    assert list(load_payers(builtin=builtin).payers) == ["ONLY"]
    assert default_payers_file().name == "payers.yaml"


def test_roster_errors_name_file_line_and_key(tmp_path: Path) -> None:
    roster = write(
        tmp_path,
        "roster.yaml",
        "members:\n  M1:\n    last_name: A\n    first_name: B\n    birth_date: 1990-01-01\n"
        "    coverage: {start: 2024-01-01}\n    in_network:\n      copays: {ZZ: 10}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_roster(roster)
    assert str(err.value).startswith(f"{roster}, line 8, members.M1.in_network.copays: ")
    assert "'ZZ' is not a service type code" in str(err.value)
    write(tmp_path, "r2.yaml", "members:\n  M2:\n    reject: {code: '99'}\n")
    with pytest.raises(ConfigError, match=r"line 3, members\.M2\.reject\.code: .*not an AAA03"):
        load_roster(tmp_path / "r2.yaml")
    write(tmp_path, "r3.yaml", "members:\n  M3: {last_name: A}\n")
    with pytest.raises(ConfigError, match=r"line 2, members\.M3: a member needs last_name"):
        load_roster(tmp_path / "r3.yaml")


def test_stub_with_a_roster_and_a_stub_over_http(tmp_path: Path) -> None:
    write(
        tmp_path,
        "small.yaml",
        "members:\n  ONE:\n    last_name: A\n    first_name: B\n    birth_date: 1990-01-01\n"
        "    coverage: {start: 2024-01-01}\n",
    )
    config = PayerConfig(roster=tmp_path / "small.yaml", latency_ms=5, jitter_ms=5)
    adapter = build_payer("P1", config)
    assert isinstance(adapter, StubPayer)
    assert list(adapter.roster.members) == ["ONE"] and adapter.latency_ms == 5
    remote = build_payer("P2", PayerConfig(url="http://127.0.0.1:8091/realtime"))
    assert isinstance(remote, X12HttpPayer)
    with pytest.raises(ConfigError, match="small.yaml"):
        build_payer("P3", PayerConfig(roster=tmp_path / "missing" / "small.yaml"))
