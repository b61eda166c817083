"""Found by the fault campaign (scenario postgres): a processing batch whose database went away
before it was finished kept its claims, this live worker's, which no heartbeat takes over; every
later message of those patients waited for the 5-minute fallback. The next batch now gives them
back first."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from engine.adapters.registry import load_routes
from engine.flow.process import Processor
from engine.mappings import load_mappings
from engine.store import Incoming, SqlMessageStore

ROUTES = """
destinations:
  raw:
    type: file
    directory: {tmp}/raw
routes:
  - name: adt-raw
    match: {{message: [ADT]}}
    mapping: none
    destinations: [raw]
"""

MSG = (
    "MSH|^~\\&|CHAOS|CLINIC|ENGINE|HUB|20261203090000||ADT^A08|C{n}|P|2.5.1\r"
    "EVN|A08|20261203090000\rPID|1||{mrn}^^^CLINIC^MR||Chaos^Patient||19800101|F\rPV1|1|O\r"
)


def test_a_batch_cut_off_by_the_database_is_given_back_at_the_next_batch(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "test.yaml").write_text(ROUTES.format(tmp=tmp_path))
    store.save_batch(  # two patients; the first has a second message behind its first
        [
            Incoming(raw=MSG.format(n=n, mrn=mrn).encode(), channel="mllp", patient_key=mrn)
            for n, mrn in enumerate(("CH1", "CH2", "CH1"))
        ]
    )
    node = store.register_node("worker")
    processor = Processor(
        store, load_routes(defaults=folder), load_mappings(), worker=node, batch=2
    )

    def database_away(*_args: object) -> list[object]:
        raise OperationalError("UPDATE", {}, Exception("server closed the connection"))

    with monkeypatch.context() as patch:
        patch.setattr(store, "finish_batch", database_away)
        with pytest.raises(OperationalError):
            processor.process_batch()  # claimed two, could not finish them
    assert store.counts().get("processing") == 2
    # the database is back: the same worker's next batches take them again at once, in order
    assert processor.process_batch() == 2
    assert processor.process_batch() == 1
    counts = store.counts()
    assert counts.get("routed", 0) + counts.get("delivered", 0) == 3, counts
    assert not counts.get("processing")
