"""Reloading routes and mappings: switched to only when every file is valid, else the running
configuration stays and the reason names the file and line (SIGHUP and POST /api/admin/reload)."""

from __future__ import annotations

from pathlib import Path

from engine.flow.config import LoadedConfig, Reloader, load_config
from engine.hl7v2.codec import parse_message
from engine.settings import Settings
from tests.flow.test_pass_through import ORU, raw

EXTRA_ROUTE = """\
destinations:
  lab-drop:
    type: file
    directory: {folder}
routes:
  - name: oru-to-lab
    match:
      message: [ORU]
    mapping: none
    destinations: [lab-drop]
"""

BROKEN_ROUTE = """\
routes:
  - name: bad
    match:
      message: [ORU]
    mapping: none
    destinations: [nowhere]
"""


def reload_settings(tmp_path: Path) -> Settings:
    site = tmp_path / "routes"
    site.mkdir()
    return Settings(var_dir=tmp_path / "var", routes_dir=site)


def make_reloader(settings: Settings) -> tuple[Reloader, list[LoadedConfig]]:
    applied: list[LoadedConfig] = []
    return Reloader(settings, load_config(settings), applied.append), applied


def test_a_valid_change_is_applied(tmp_path: Path) -> None:
    settings = reload_settings(tmp_path)
    reloader, applied = make_reloader(settings)
    before = len(reloader.current.routes.routes)
    running_gate = reloader.current.gate
    assert settings.routes_dir is not None
    (settings.routes_dir / "lab.yaml").write_text(EXTRA_ROUTE.format(folder=tmp_path / "lab"))

    result = reloader.reload()

    assert result.applied and result.error is None
    assert result.routes == before + 1
    assert [c.routes.route("oru-to-lab").name for c in applied] == ["oru-to-lab"]
    assert reloader.current is applied[0]
    # the running gate refused an ORU (no route took it); the new one passes it on
    oru = parse_message(raw(ORU))
    assert running_gate.refuse(oru) is not None
    assert reloader.current.gate.refuse(oru) is None


def test_an_invalid_change_keeps_the_running_configuration(tmp_path: Path) -> None:
    settings = reload_settings(tmp_path)
    reloader, applied = make_reloader(settings)
    running = reloader.current
    assert settings.routes_dir is not None
    (settings.routes_dir / "bad.yaml").write_text(BROKEN_ROUTE)

    result = reloader.reload()

    assert not result.applied
    assert applied == []
    assert reloader.current is running
    assert result.error is not None and "bad.yaml" in result.error and "nowhere" in result.error
    assert result.as_dict()["status"] == "kept"
