"""The fuzzing campaign's findings, kept: every crashing input `make fuzz` found, replayed.

Each file in ``tests/fuzz/cases/`` is an input that once raised something other than the
engine's typed errors (its name says the target: ``routes-<sha>.bin``); it must now be answered
with a typed error or go through. A short hypothesis run of each target follows, so the harnesses
``make fuzz`` runs stay working; the full campaign is ``make fuzz`` (100,000 inputs a target).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.hl7v2.codec import parse_message
from fuzz.runner import Target, run_target
from fuzz.targets import TARGETS

CASES = Path(__file__).parent / "cases"


def _cases() -> list[Path]:
    return sorted(CASES.glob("*.bin"))


def test_every_case_names_a_target() -> None:
    assert _cases(), "the campaign's crashing inputs are kept here"
    for path in _cases():
        assert path.name.split("-", 1)[0] in TARGETS, path.name


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.name)
def test_crash_found_by_fuzzing_is_fixed(path: Path) -> None:
    """A typed error or nothing, within the campaign's 1 s of CPU time per input."""
    target = TARGETS[path.name.split("-", 1)[0]]
    if target.setup is not None:
        target.setup()
    start = time.process_time()
    try:
        target.run(path.read_bytes())
    except target.typed:
        pass  # a typed error is the right answer to a bad input
    assert time.process_time() - start < 1.0


def test_a_long_run_of_delimiters_is_written_in_linear_time() -> None:
    """er7-d4b325e4678ca526.bin: a field of some 1,700 ``^~`` not followed by a field separator
    took 0.45 s to write (the trim regex tried the run from each of its characters: n² steps;
    10,000 took 11 s). Trailing empties are still trimmed as before."""
    msg = parse_message("MSH|^~\\&|A|B\rPID|1||x" + "^~" * 20_000 + "y^~&|^^|\r")
    start = time.process_time()
    text = msg.to_er7()
    assert time.process_time() - start < 0.2
    # each empty component before a repetition separator trimmed, and the trailing empties
    assert text.endswith("PID|1||x" + "~" * 20_000 + "y\r")


def test_route_mapping_given_as_a_list_is_a_config_error() -> None:
    """routes-b350207f88c8e1e2.bin: ``mapping:`` holding a list raised TypeError (unhashable)
    out of the route file's model; it is now the file, line and key."""
    data = (CASES / "routes-b350207f88c8e1e2.bin").read_bytes()
    with pytest.raises(ConfigError, match=r"line \d+, routes\[0\]\.mapping: .*list, not a name"):
        TARGETS["routes"].run(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_run_of_each_target_finds_nothing(name: str, tmp_path: Path) -> None:
    stats = run_target(TARGETS[name], 40, out=tmp_path, seed=1, slow_s=30.0)
    assert stats.inputs == 40
    assert stats.crashes == 0, stats.kinds


def test_runner_counts_keeps_and_names_a_crash(tmp_path: Path) -> None:
    from hypothesis import strategies as st

    def run(data: bytes) -> None:
        if data.startswith(b"x"):
            raise ConfigError("typed: not a crash")
        if data.startswith(b"y"):
            empty: dict[bytes, int] = {}
            empty[data] += 1  # a KeyError: a crash

    inputs = st.builds(lambda a, b: a + b, st.sampled_from([b"x", b"y", b"z"]), st.binary())
    target = Target("demo", lambda: inputs, run)
    stats = run_target(target, 60, out=tmp_path)
    assert stats.inputs == 60
    assert stats.crashes > 0 and stats.typed > 0
    assert stats.crashes + stats.typed < 60  # the b"z" inputs pass
    (key,) = stats.kinds
    assert key.startswith("KeyError at ")
    saved = sorted((tmp_path / "crashes").glob("demo-*.bin"))
    assert saved and all(p.read_bytes().startswith(b"y") for p in saved)
    assert "0 over 1 s" in stats.line()


def test_tree_mutations_never_change_the_shared_odd_values() -> None:
    """A mutation once put one of ``ODD_VALUES`` (a shared ``[None]``) into a document and then
    edited it in place: the list came to hold itself and the route campaign stopped."""
    import copy
    import random

    from fuzz.mutate import ODD_VALUES, Program, mutate_tree

    before = copy.deepcopy(ODD_VALUES)
    rng = random.Random(3)  # the old code changed them within 60 of these
    for _ in range(400):
        mutate_tree(b"a: [1, {b: 2}]\nc: x\n", Program(rng.randbytes(24)))
    assert repr(ODD_VALUES) == repr(before)


def test_a_resource_plan_without_segment_maps_is_a_config_error(tmp_path: Path) -> None:
    """mappings-75cb2bec531dee2f.bin: a message map's resource with ``segments: []`` (and
    ``each:``) raised IndexError compiling the maps; without ``each`` every message would have
    raised it. It is now refused at load, with the file, line and key."""
    from engine.mappings import default_specs_dir, load_mappings

    site = tmp_path / "messages"
    site.mkdir()
    text = (default_specs_dir() / "messages" / "SIU.yaml").read_text("utf-8")
    lines = text.splitlines()
    # the first resource's segment list, emptied
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("segments:"))
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    end = at + 1
    while end < len(lines) and lines[end].startswith(indent + "  - "):
        end += 1
    lines[at:end] = [f"{indent}segments: []"]
    (site / "SIU.yaml").write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(ConfigError, match=rf"SIU\.yaml, line {at + 1}, resources\[0\]\.segments"):
        load_mappings(tmp_path)


def test_a_segment_map_that_builds_itself_is_a_config_error(tmp_path: Path) -> None:
    """mappings-00c35c93f0e71984.bin: AL1's ``build: AL1-reaction`` changed to ``build: AL1``
    recursed without end in the compiler (RecursionError); a build cycle is now refused at
    load, naming the file, the rule and the cycle."""
    from engine.mappings import default_specs_dir, load_mappings

    (tmp_path / "segments").mkdir()
    text = (default_specs_dir() / "segments" / "AL1.yaml").read_text("utf-8")
    assert "build: AL1-reaction" in text
    (tmp_path / "segments" / "AL1.yaml").write_text(
        text.replace("build: AL1-reaction", "build: AL1"), "utf-8"
    )
    with pytest.raises(ConfigError, match=r"AL1\.yaml, rules\[\d+\]: build 'AL1' is a cycle"):
        load_mappings(tmp_path)
