"""``engine keys`` as an operator runs it: a real subprocess under an engine home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli import assert_one_line_error


def keys(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "engine", "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )


def _key_material(text: str) -> bool:
    return "PRIVATE KEY" in text or '"d"' in text or '"n"' in text or '"x"' in text


def test_create_rotate_list_retire(tmp_path: Path) -> None:
    made = keys(tmp_path, "create", "--alg", "ES384")
    assert made.returncode == 0, made.stderr
    first = made.stdout.split()[3]
    folder = tmp_path / "var" / "keys"
    assert str(folder / f"{first}.pem") in made.stdout

    again = keys(tmp_path, "create")
    assert_one_line_error(again, "an active key exists", first, "engine keys rotate")

    rotated = keys(tmp_path, "rotate")
    assert rotated.returncode == 0, rotated.stderr
    second = rotated.stdout.split()[3].rstrip(";")
    assert second != first and f"previous: {first}" in rotated.stdout

    listed = keys(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (first, "ES384", "previous"),
        (second, "ES384", "active"),
    ]
    assert rows[0][4] == str(folder / f"{first}.pem")

    refused = keys(tmp_path, "retire", second)
    assert_one_line_error(refused, second, "is active", "rotate first")
    retired = keys(tmp_path, "retire", first)
    assert retired.returncode == 0, retired.stderr
    assert not (folder / f"{first}.pem").exists()
    states = [line.split()[2] for line in keys(tmp_path, "list").stdout.splitlines()[1:]]
    assert states == ["retired", "active"]

    for proc in (made, rotated, listed, retired):
        assert not _key_material(proc.stdout + proc.stderr)


def test_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(keys(tmp_path, "rotate"), "no active key to rotate", "keys create")
    assert_one_line_error(keys(tmp_path, "retire", "abc"), "no key with kid abc")
    bad = keys(tmp_path, "create", "--alg", "HS256")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'HS256' is not one of RS384, ES384" in bad.stderr
    empty = keys(tmp_path, "list")
    assert empty.returncode == 0 and "no signing keys" in empty.stderr


def test_retire_a_kid_that_begins_with_a_dash(tmp_path: Path) -> None:
    """A kid is base64url, so one key in 64 gets a kid such as "-1Sd7...": the command line must
    take it as the kid, not as an unknown option (a CI run once failed on exactly that)."""
    from engine.keys.keyring import Keyring

    keyring = Keyring(tmp_path / "var" / "keys")
    keyring.create("ES384")
    for _ in range(2000):  # about 64 rotations expected; EC keys are made in milliseconds
        # the key rotated out, never the active one: only a previous key may be retired (the
        # first key began with '-' in one CI run, 1 in 64, and retiring it was refused)
        _, old = keyring.rotate()
        if old.kid.startswith("-"):
            break
    assert old.kid.startswith("-"), "no kid beginning with '-' in 2,000 keys"

    retired = keys(tmp_path, "retire", old.kid)
    assert retired.returncode == 0, retired.stderr
    assert f"retired {old.kid}" in retired.stdout
    assert_one_line_error(keys(tmp_path, "retire", "-nokey"), "no key with kid -nokey")
