"""How the engine tries again: one retry policy and one circuit breaker for every part that
calls something that can fail for a while (destinations, payers, the database under the loops).

- :class:`RetryPolicy` is the ``retry:`` block of a route's destination and of a payer file:
  attempts in all and an exponential back-off between them.
- :class:`CircuitBreaker` counts consecutive retryable failures per key (a destination, a payer)
  and, past a threshold, pauses that key for a doubling while, so that a peer that is down is
  probed rather than hammered. A success closes it.
- :func:`backoff_s` is the wait of a polling loop after its n-th failure in a row (the database
  away for a moment): the same doubling, capped at 30 s.

A leaf module: pydantic only, so that route files, payer files, the flow and the jobs can all
import it without an import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CircuitBreaker", "RetryPolicy", "backoff_s"]


class RetryPolicy(BaseModel):
    """How often, and how far apart, a failed call is tried again (exponential back-off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: attempts in all, the first included; after the last the message is dead-lettered
    max_attempts: int = Field(default=10, ge=1)
    base_delay_s: float = Field(default=2.0, ge=0)
    max_delay_s: float = Field(default=300.0, ge=0)

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): base * 2^(n-1),
        capped at ``max_delay_s``. Jitter, if wanted, is the caller's."""
        if attempt < 1:
            return 0.0
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** min(attempt - 1, 32)))

    def gives_up_after(self, attempt: int) -> bool:
        """True when failed attempt number ``attempt`` was the last one allowed."""
        return attempt >= self.max_attempts


def backoff_s(failures: int, *, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """The wait of a polling loop after ``failures`` failures in a row."""
    return float(min(cap_s, base_s * 2 ** min(max(failures, 0), 6)))


class CircuitBreaker:
    """Per key: after ``threshold`` retryable failures in a row, paused for ``base_s`` doubling
    with each further failure up to ``cap_s``. Times are the caller's clock (a loop's time)."""

    def __init__(self, *, threshold: int = 5, base_s: float = 0.5, cap_s: float = 60.0) -> None:
        self.threshold = threshold
        self.base_s = base_s
        self.cap_s = cap_s
        self._failures: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}

    def record(self, key: str, *, ok: bool, retryable: bool, now: float) -> None:
        """One call's outcome. A success, or a failure that retrying would not cure (the peer
        answered), closes the breaker: the peer is up."""
        if ok or not retryable:
            self._failures.pop(key, None)
            self._paused_until.pop(key, None)
            return
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        if n >= self.threshold:
            self._paused_until[key] = now + min(
                self.cap_s, self.base_s * 2 ** min(n - self.threshold, 7)
            )

    def is_open(self, key: str, now: float) -> bool:
        """True while calls to ``key`` are paused."""
        return self._paused_until.get(key, 0.0) > now

    def open_keys(self, now: float) -> list[str]:
        """The keys paused at ``now``."""
        return [key for key, until in self._paused_until.items() if until > now]

    def failures(self, key: str) -> int:
        """Consecutive retryable failures of ``key`` so far."""
        return self._failures.get(key, 0)
