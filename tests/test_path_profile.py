"""bench/path_profile.py: each py-spy sample goes to the stage its stack says."""

from __future__ import annotations

from pathlib import Path

from bench.path_profile import ENGINE_ROOT, NO_ENGINE, _leaves, classify

SITE = "/venv/lib/python3.11/site-packages"


def frame(function: str, file: str, line: int = 1) -> str:
    return f"{function} ({file}:{line})"


def eng(rel: str, function: str = "f") -> str:
    return frame(function, ENGINE_ROOT + rel)


def test_the_database_executing_is_told_from_sqlalchemy_around_it() -> None:
    store = eng("store/messages.py", "insert")
    execute = frame("do_execute", f"{SITE}/sqlalchemy/engine/default.py")
    compile_ = frame("_compiler", f"{SITE}/sqlalchemy/sql/elements.py")
    assert classify([store, execute]).startswith("database:")
    assert classify([store, compile_]).startswith("SQLAlchemy:")


def test_the_innermost_engine_frame_names_the_stage() -> None:
    outer = eng("flow/process.py", "process")
    assert classify([outer, eng("mappings/compiler.py")]) == "mapping v2 to FHIR"
    assert classify([outer, eng("hl7v2/codec.py")]) == "HL7v2: parsing, checks, ACKs"
    assert classify([outer]) == "pipeline: ingest, claim, process, deliver"
    assert classify([eng("adapters/mllp/server.py")]) == "MLLP: framing, reading, writing"
    assert classify([outer, eng("adapters/files.py")]) == "delivery (file destination)"
    assert classify([eng("service.py")]) == "engine: service.py"


def test_sqlalchemys_own_engine_folder_is_not_the_engine() -> None:
    """sqlalchemy/engine/... is not the engine's folder: no engine frame, the runtime's."""
    other = frame("run", f"{SITE}/uvloop/__init__.py")
    assert classify([other]) == NO_ENGINE
    assert classify([]) == NO_ENGINE


def test_fhir_models_win_over_the_engine_frame_that_called_them() -> None:
    stack = [eng("mappings/compiler.py"), frame("validate", f"{SITE}/pydantic/main.py")]
    assert classify(stack) == "FHIR models (fhir.resources, pydantic)"


def test_raw_output_is_counted_per_stage(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    mapping = eng("mappings/compiler.py")
    raw.write_text(
        f"thread (0x1);{eng('flow/process.py')};{mapping} 7\n"
        f"thread (0x2);{frame('select', '/usr/lib/python3.11/selectors.py')} 3\n"
        "garbage\n"
    )
    leaves = _leaves(raw)
    assert {stage: sum(c.values()) for stage, c in leaves.items()} == {
        "mapping v2 to FHIR": 7,
        NO_ENGINE: 3,
    }


def test_the_engines_runtime_module_is_the_event_loop() -> None:
    """engine/runtime.py starts the loop: samples whose innermost engine frame is there are the
    loop's own, not an engine stage."""
    assert classify([eng("runtime.py", "run"), frame("select", "/usr/lib/x.py")]) == NO_ENGINE
