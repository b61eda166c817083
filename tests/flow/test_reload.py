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
    running: list[Settings] = []

    def apply(config: LoadedConfig, settings: Settings) -> None:
        applied.append(config)
        running.append(settings)

    reloader = Reloader(settings, load_config(settings), apply)
    reloader.running = running  # type: ignore[attr-defined]
    return reloader, applied


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


def test_what_runs_is_the_checked_copy_not_the_files_edited_since(tmp_path: Path) -> None:
    """The worker is started on a snapshot of the files the reload checked: a file broken (or
    changed) after the reload does not reach it, and errors name the admin's files."""
    settings = reload_settings(tmp_path)
    reloader, _ = make_reloader(settings)
    assert settings.routes_dir is not None
    (settings.routes_dir / "lab.yaml").write_text(EXTRA_ROUTE.format(folder=tmp_path / "lab"))
    (settings.routes_dir / "notes.txt").write_text("not read by the loaders: not copied")
    assert reloader.reload().applied
    [running] = reloader.running  # type: ignore[attr-defined]
    assert running.routes_dir != settings.routes_dir
    assert running.routes_dir.parent.parent == settings.var_dir / "config"
    assert sorted(p.name for p in running.routes_dir.iterdir()) == ["lab.yaml"]
    assert str(settings.routes_dir / "lab.yaml") in reloader.current.files  # not the copy

    (settings.routes_dir / "lab.yaml").write_text(BROKEN_ROUTE)
    # what the worker loads (a restart after a crash too) is still the checked set
    assert load_config(running).routes.route("oru-to-lab").name == "oru-to-lab"
    refused = reloader.reload()
    assert not refused.applied and refused.error is not None
    assert str(settings.routes_dir / "lab.yaml") in refused.error
    assert "var/config" not in refused.error


def test_old_snapshots_are_pruned(tmp_path: Path) -> None:
    settings = reload_settings(tmp_path)
    reloader, _ = make_reloader(settings)
    for _ in range(6):
        assert reloader.reload().applied
    kept = list((settings.var_dir / "config").iterdir())
    assert len(kept) == 3
    [*_, last] = reloader.running  # type: ignore[attr-defined]
    assert last.routes_dir.parent in kept
