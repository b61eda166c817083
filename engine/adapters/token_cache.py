"""One OAuth token shared by every worker process, through a file (smart-backend and athena).

A token endpoint that is rate limited (athenahealth's preview allows a handful of token requests
a minute per client) or slow (Epic's checks a signed assertion and fetches a JWKS) must not be
asked once per worker process. The token lives in ``VAR_DIR/tokens/<kind>-<hash>.json`` (0600,
folder 0700); an exclusive ``fcntl`` lock on the ``.lock`` file beside it is held while a process
reads it and, when it is missing, expired or the one a server just refused, fetches a new one. A
second process waits on the lock and then reads the token the first one wrote: one request.

The token is used until :func:`use_until` (60 s before ``expires_in`` runs out, half its lifetime
when that is shorter). When the token endpoint answers 429 (or 503) with ``Retry-After``, the
wait is written in the file too (``not_before``, at most :data:`MAX_COOLDOWN_S` = five minutes
ahead; one further out is ignored): every process that takes the lock before it passes fails at
once with :class:`TokenCooldown` instead of asking again, so several workers never retry in a
burst. No token value is logged; the file holds it, readable by the engine only.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from engine.adapters.oauth2 import TokenError

__all__ = [
    "MAX_COOLDOWN_S",
    "CachedToken",
    "TokenCooldown",
    "lock_file",
    "shared_token",
    "use_until",
]

_EARLY_S = 60.0
#: the longest wait the token endpoint may impose on every process, seconds: written into the
#: shared file, a longer one (``Retry-After: 1000000000``) stopped the destination's every
#: delivery and pull, across restarts, for as long
MAX_COOLDOWN_S = 300.0
_MAX_FILE_BYTES = 64 * 1024


class TokenCooldown(TokenError):
    """The token endpoint asked us to wait (429/503 Retry-After): no request until then."""

    def __init__(self, detail: str, *, retry_after_s: float) -> None:
        super().__init__(detail, retryable=True)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class CachedToken:
    """A token and when to stop using it (``time.time()`` seconds); ``fetched``: by this call."""

    token: str
    use_until: float
    fetched: bool


def use_until(now: float, expires_in: float) -> float:
    """When to stop using a token fetched at ``now``: a minute early, or at half its life."""
    return now + expires_in - min(_EARLY_S, expires_in / 2)


def _lock(path: Path) -> int:
    """Open and exclusively lock ``path`` (blocking; run in a thread). Closing the fd unlocks."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


#: the blocking lock, public for tests that play "another process holding it"
lock_file = _lock


async def _locked(path: Path) -> int:
    """:func:`_lock` in a thread. Cancelled while it waits, the lock it then takes is let go at
    once (else this process would hold it, and every other process wait on it, for ever)."""
    waiting = asyncio.ensure_future(asyncio.to_thread(_lock, path))
    try:
        return await asyncio.shield(waiting)
    except asyncio.CancelledError:
        waiting.add_done_callback(_close_taken)
        raise


def _close_taken(done: asyncio.Future[int]) -> None:
    if not done.cancelled() and done.exception() is None:
        os.close(done.result())


def _read(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_FILE_BYTES + 1)
        doc = json.loads(raw)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write(path: Path, doc: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)
    os.replace(tmp, path)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


async def shared_token(
    path: Path,
    fetch: Callable[[], Awaitable[tuple[str, float]]],
    *,
    clock: Callable[[], float],
    refused: str | None = None,
) -> CachedToken:
    """The token in ``path`` if it is still good and not ``refused``; else ``fetch()``'s
    ``(token, expires_in)``, written there for the other processes. Both under the file's lock.

    ``fetch`` raising :class:`TokenCooldown` records its wait in the file; a call inside a
    recorded wait raises :class:`TokenCooldown` without fetching. Other errors pass through.
    """
    fd = await _locked(path.with_suffix(".lock"))
    try:
        doc = _read(path)
        now = clock()
        token = doc.get("access_token")
        if isinstance(token, str) and token and token != refused:
            until = _number(doc.get("use_until"))
            if now < until:
                return CachedToken(token, until, False)
        not_before = _number(doc.get("not_before"))
        # a wait further out than the cap was not written by this code (an older engine, a
        # clock set back): not believed, or it would hold every process for as long
        if now < not_before <= now + MAX_COOLDOWN_S:
            wait = not_before - now
            raise TokenCooldown(
                f"token endpoint asked to wait ({wait:.0f} s left)", retry_after_s=wait
            )
        try:
            token, expires_in = await fetch()
        except TokenCooldown as exc:
            exc.retry_after_s = min(exc.retry_after_s, MAX_COOLDOWN_S)
            _write(path, {**doc, "not_before": clock() + exc.retry_after_s})
            raise
        until = use_until(clock(), expires_in)
        _write(path, {"access_token": token, "use_until": until})
        return CachedToken(token, until, True)
    finally:
        os.close(fd)
