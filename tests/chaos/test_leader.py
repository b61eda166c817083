"""The kill-leader scenario's own pieces (chaos/leader.py; ``make chaos`` runs the scenario itself,
two ``engine serve`` nodes on a private PostgreSQL): the appointments fed to the eligibility runs,
the leader read off the logs, and the verdict on the payer's 270s and the takeovers."""

from __future__ import annotations

from chaos.leader import (
    TAKEOVER_BOUND_S,
    appointment_items,
    asked_again,
    eligibility_problems,
    lead_terms,
)


def test_appointment_batches_follow_on_with_their_own_ids_adt_before_siu() -> None:
    first, second = appointment_items(0, 2), appointment_items(2, 2)
    ids = [i.control_id for i in first + second]
    assert len(ids) == 24 == len(set(ids))  # 3 patients x (ADT, SIU) x 4 copies, none reused
    for batch in (first, second):
        kinds = [i.control_id.split("-")[1] for i in batch]
        assert kinds == ["A", "S"] * 6  # each patient's ADT (with its coverage) before its SIU
        assert all(b"IN1|" in i.raw for i in batch[::2])
    # the next copies: other MRNs and member ids than the first batch's
    assert not {i.raw.split(b"PID|1||")[1][:11] for i in first} & {
        i.raw.split(b"PID|1||")[1][:11] for i in second
    }


def test_a_term_is_a_log_line() -> None:
    log = "x\nWARNING this node leads: singleton jobs start here\ny\n"
    assert lead_terms(log * 2) == 2 and lead_terms("") == 0


def test_a_member_asked_once_in_each_of_two_runs_is_told_apart_from_twice_in_one() -> None:
    asked = {"M1": 2, "M2": 2, "M3": 1, "M4": 3}
    runs = {"M1": 1, "M2": 2, "M3": 1, "M4": 2}  # runs with an item checked for the member
    assert asked_again(asked, runs) == (["M1", "M4"], ["M2"])


def test_the_verdict_names_a_second_270_an_unchecked_appointment_and_a_late_leader() -> None:
    assert eligibility_problems({"M1": 1, "M2": 1}, {"M2": 1}, 2, 2, [3.1, 4.0]) == []
    [again] = eligibility_problems({"M1": 1, "M2": 2}, {"M2": 2}, 2, 2, [3.1, 4.0])
    assert "asked again by another run about ['M2']" in again
    problems = eligibility_problems({"M1": 2, "M2": 1}, {}, 3, 2, [3.0, None, TAKEOVER_BOUND_S + 1])
    assert len(problems) == 3
    assert "['M1']" in problems[0]
    assert "1 of 3 appointments never checked" in problems[1]
    assert "kills [2, 3]" in problems[2]


def test_the_leading_worker_process_is_read_from_the_nodes_log() -> None:
    """An ``engine serve`` has two worker processes: the campaign kills the one whose term is
    the node's last, not whichever comes first (the other's death is no takeover)."""
    from chaos.leader import leading_pid

    log = (
        "23:02:46 WARNING engine.jobs.leader this node leads: singleton jobs start here "
        "node=vm:17579:a79fc67c\n"
        "23:03:00 INFO engine.flow.worker something else node=vm:17600:00aa11bb\n"
        "23:03:00 WARNING engine.jobs.leader this node leads: singleton jobs start here "
        "node=vm:17598:9f0c2387\n"
    )
    assert leading_pid(log) == 17598
    assert leading_pid("no term yet\n") is None
