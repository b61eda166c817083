"""The campaign's verdict and load plan, on made-up observations: each kind of defect counted."""

from __future__ import annotations

from chaos.check import StoreView, judge, read_fhir
from chaos.load import plan, split_control_id


def test_plan_numbers_each_patients_messages_in_order_and_senders_own_their_patients() -> None:
    items = plan(400, senders=8, patients_per_sender=5)
    assert sum(len(mine) for mine in items) == 400
    owners: dict[int, int] = {}
    for s, mine in enumerate(items):
        seqs: dict[int, list[int]] = {}
        for item in mine:
            assert owners.setdefault(item.patient, s) == s  # one sender per patient
            assert split_control_id(item.control_id) == (item.patient, item.seq)
            assert f"|{item.control_id}|P|2.5.1\r".encode() in item.raw
            seqs.setdefault(item.patient, []).append(item.seq)
        for got in seqs.values():
            assert got == list(range(len(got)))
    assert split_control_id("X-1") is None and split_control_id("P12.x") is None


def _view(waiting: tuple[str, ...] = ()) -> StoreView:
    return StoreView(cid_of={1: "P0001.0", 2: "P0001.1", 3: "P0002.0"}, waiting=set(waiting))


def test_all_delivered_once_in_order_is_clean() -> None:
    acked = ["P0001.0", "P0001.1", "P0002.0"]
    files = [("P0001.0", 10), ("P0002.0", 11), ("P0001.1", 12)]
    v = judge(3, acked, _view(), ["P0001.0", "P0002.0", "P0001.1"], files)
    counts = (v.acked, v.delivered, v.duplicates, v.lost, v.out_of_order, v.stuck)
    assert counts == (3, 3, 0, 0, 0, 0) and v.ok


def test_duplicates_lost_stuck_and_out_of_order_are_each_counted() -> None:
    acked = ["P0001.0", "P0001.1", "P0002.0", "P0003.0"]
    fhir = ["P0001.1", "P0001.0", "P0002.0", "P0002.0"]  # 1.0 after 1.1; 2.0 twice
    files = [("P0001.0", 10), ("P0001.1", 12), ("P0002.0", 11)]  # P0003.0 nowhere
    v = judge(5, acked, _view(), fhir, files)
    assert v.duplicates == 1 and v.duplicate_ids == ["P0002.0"]
    assert v.out_of_order == 1
    assert v.lost == 1 and v.lost_ids == ["P0003.0"]
    assert v.stuck == 0 and not v.ok
    stuck = judge(5, acked, _view(("P0003.0",)), fhir, files)
    assert (stuck.lost, stuck.stuck) == (0, 1)


def test_file_times_that_tie_are_not_out_of_order() -> None:
    acked = ["P0001.0", "P0001.1"]
    v = judge(2, acked, _view(), ["P0001.0", "P0001.1"], [("P0001.1", 5), ("P0001.0", 5)])
    assert v.out_of_order == 0
    v = judge(2, acked, _view(), ["P0001.0", "P0001.1"], [("P0001.1", 5), ("P0001.0", 6)])
    assert v.out_of_order == 1


def test_read_fhir_counts_applications_not_refusals_or_replays() -> None:
    log = [
        {"interaction": "transaction", "status": 503, "idempotency_key": "1-local-fhir"},
        {"interaction": "transaction", "status": 200, "idempotency_key": "1-local-fhir"},
        {
            "interaction": "transaction",
            "status": 200,
            "idempotency_key": "1-local-fhir",
            "replayed": True,
        },
        {"interaction": "transaction", "status": 200, "idempotency_key": "3-local-fhir"},
    ]
    assert read_fhir(log, {1: "P0001.0", 3: "P0002.0"}) == ["P0001.0", "P0002.0"]
