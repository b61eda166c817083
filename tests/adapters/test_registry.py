"""The destination registry: a route file's destination type builds its adapter from its keys."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.destination import Destination
from engine.adapters.fhir_rest import FhirRestDestination
from engine.adapters.files import FileDropDestination
from engine.adapters.mllp.client import MLLPDestination
from engine.adapters.registry import DESTINATION_TYPES, build_destination, destination_config
from engine.errors import ConfigError
from engine.routes.spec import DestinationSpec


def spec(**keys: Any) -> DestinationSpec:
    return DestinationSpec.model_validate(keys)


def built(destination: Destination) -> Destination:
    asyncio.run(destination.close())
    return destination


@pytest.mark.parametrize(
    ("keys", "adapter"),
    [
        ({"type": "fhir", "base_url": "http://127.0.0.1:9/fhir"}, FhirRestDestination),
        ({"type": "mllp", "host": "127.0.0.1", "port": 9}, MLLPDestination),
        ({"type": "file", "directory": "out"}, FileDropDestination),
    ],
)
def test_each_type_builds_its_adapter(keys: dict[str, Any], adapter: type) -> None:
    dest = built(build_destination("d", spec(**keys, retry={"max_attempts": 2})))
    assert isinstance(dest, adapter) and dest.name == "d"


def test_the_adapter_gets_its_own_keys_and_the_routes_keep_type_and_retry() -> None:
    s = spec(type="file", directory="out", retry={"max_attempts": 2})
    assert s.settings == {"directory": "out"} and s.retry.max_attempts == 2
    config = destination_config(s)
    assert config == DESTINATION_TYPES["file"].config(directory=Path("out"))


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"type": "smtp"}, "destination 'd': type: destination type 'smtp' does not match"),
        ({"type": "mllp", "host": "h"}, "destination 'd': port: Field required"),
        ({"type": "file", "directory": "out", "dir": "x"}, "destination 'd': dir: Extra inputs"),
    ],
)
def test_a_destination_that_cannot_work_is_a_config_error(keys: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_destination("d", spec(**keys))
    assert str(info.value).startswith(says), info.value
