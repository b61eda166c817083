"""The lock-out holds under parallel guesses (SQLite and PostgreSQL): each attempt claims its
place in the failure count before its password is checked, so a burst of guesses gets at most
``max_failed`` checks, and the right password is refused once the account is locked (issue 13)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

import engine.store.users as users_module
from engine.store import SqlMessageStore, Who
from engine.store.db import utcnow
from engine.store.users import LoginPolicy, hash_password

PASSWORD = "correct horse battery"
CLI = Who("root", "cli")


class CountingVerify:
    """Wraps the store's password check: how many real passwords were checked."""

    def __init__(self) -> None:
        self.real = 0
        self.lock = threading.Lock()
        self.inner = users_module._verify

    def __call__(self, hashed: str | None, password: str) -> bool:
        if hashed is not None:
            with self.lock:
                self.real += 1
        time.sleep(0.05)  # a burst overlaps, as with argon2's second
        return self.inner(hashed, password)


def test_twenty_parallel_guesses_get_at_most_max_failed_checks(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_user("vw", ["viewer"], CLI, password_hash=hash_password(PASSWORD))
    counting = CountingVerify()
    monkeypatch.setattr(users_module, "_verify", counting)
    policy = LoginPolicy(max_failed=5, lockout=timedelta(minutes=15))
    guesses = [f"wrong password {i:02d}" for i in range(20)]
    guesses.insert(10, PASSWORD)  # the right password inside the burst
    with ThreadPoolExecutor(max_workers=21) as pool:
        results = list(pool.map(lambda p: store.check_login("vw", p, None, policy), guesses))
    assert counting.real <= 5
    right = results[10]
    wrong = results[:10] + results[11:]
    assert all(r.user is None for r in wrong)
    if right.user is None:
        assert right.reason == "locked"
    # the lock holds now, for the right password too, and no password is checked
    user = store.get_user("vw")
    assert user is not None and user.locked(utcnow())
    before = counting.real
    assert store.check_login("vw", PASSWORD, None, policy).reason == "locked"
    assert counting.real == before
    checked = [e for e in store.audit_entries(limit=100) if e.detail == "wrong password"]
    assert len(checked) <= 5


def test_the_count_is_kept_until_the_lock_expires(store: SqlMessageStore) -> None:
    store.add_user("vw", ["viewer"], CLI, password_hash=hash_password(PASSWORD))
    policy = LoginPolicy(max_failed=2, lockout=timedelta(seconds=1))
    for i in range(2):
        assert store.check_login("vw", f"wrong password {i}", None, policy).user is None
    user = store.get_user("vw")
    assert user is not None and user.failed_logins == 2 and user.locked(utcnow())
    assert store.check_login("vw", PASSWORD, None, policy).reason == "locked"
    time.sleep(1.1)
    # the lock expired: the count starts again, and the right password works
    assert store.check_login("vw", "wrong password again", None, policy).reason == "wrong password"
    assert store.check_login("vw", PASSWORD, None, policy).reason == "ok"
    user = store.get_user("vw")
    assert user is not None and user.failed_logins == 0 and not user.locked(utcnow())
