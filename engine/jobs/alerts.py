"""The alerts' evaluation on the worker's schedule: every ``ENGINE_ALERTS_INTERVAL_S`` (60 s),
each rule of ``alerts.yaml`` is evaluated, the alerts' states recorded, and the notices owed sent.

It runs in every worker process (``engine serve``'s, each ``engine worker``) as a loop, not
through the persistent job store: a database that stops answering must still raise the
``database`` alert, and APScheduler's job store is that database. The rules are evaluated by the
leader node only (engine/jobs/leader.py); should two evaluate at once (a leader stepping down as
another takes over), the store's conditional updates let one of them record each change and send
each notice (engine/alerts/state.py).

When the database does not answer, nothing can be recorded there, and no node can lead (the
leader's lock is the database's): the ``database`` rule's notice is then sent by every worker
process, leader or not, from what it holds in memory (once per process), and its recovery when
the database answers again. Every failure (a channel, a query, the file) is
logged without PHI and tried again at the next evaluation; none stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Engine

from engine.alerts.channels import notice_text, send
from engine.alerts.evaluate import (
    DOES_NOT_ANSWER,
    Evaluation,
    database_finding,
    evaluate_rules,
    probe_database,
)
from engine.alerts.rules import AlertConfig, Database, Disk, load_alert_rules
from engine.alerts.state import AlertStates, Finding, Notice
from engine.settings import Settings

__all__ = ["AlertRunner", "RunReport", "run_alerts"]

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What one evaluation did (``engine alerts run`` prints it)."""

    findings: list[Finding] = field(default_factory=list)
    transitions: list[tuple[str, str, str]] = field(default_factory=list)
    #: (rule, subject, notice, channel, error or None)
    sent: list[tuple[str, str, str, str, str | None]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


class AlertRunner:
    """Evaluates ``config`` against the store on ``db_engine`` and sends the notices, as
    ``node`` (the claims on notices carry it)."""

    #: not leading, whether this process sends the database's raise while it does not answer
    #: (one worker process of each ``engine serve``: engine/flow/worker.py)
    away_notices = True

    def __init__(
        self, config: AlertConfig, db_engine: Engine, settings: Settings, node: str
    ) -> None:
        self.config = config
        self.db_engine = db_engine
        self.settings = settings
        self.node = node
        self.states = AlertStates(db_engine)
        #: database rules whose raise this process sent while the database was away
        self._held: dict[str, Notice] = {}
        #: when the history was last pruned (monotonic seconds; once an hour)
        self._pruned: float | None = None

    async def run_once(self, *, now: datetime | None = None, leading: bool = True) -> RunReport:
        """One evaluation: findings, transitions, notices (``now``: the time it is, for tests
        that let time pass). Not ``leading``: only the database's own rule, and only while the
        database does not answer (the leader evaluates everything else)."""
        report = RunReport()
        if not self.config.rules:
            return report
        now = now or datetime.now(UTC)
        database = await self._probe()
        # the database does not answer: its rules would each wait for it in vain
        away = any(f.summary.startswith(DOES_NOT_ANSWER) for f in database)
        if not leading:
            if away and self.away_notices:
                await self._without_store(database, report)
            else:
                await self._recovered_while_away(database, report)
            return report
        skip = frozenset(r.name for r in self.config.rules if away and not isinstance(r, Disk))
        evaluation: Evaluation = await asyncio.to_thread(
            partial(evaluate_rules, self.config, self.db_engine, self.settings, now=now, skip=skip)
        )
        for name in sorted(skip - {f.rule for f in database}):
            evaluation.errors[name] = "the database does not answer"
        evaluation.findings.extend(database)
        report.findings = evaluation.findings
        report.errors = dict(evaluation.errors)
        try:
            report.transitions = await asyncio.to_thread(
                self.states.apply, evaluation.findings, evaluation.complete, now=now
            )
            await asyncio.to_thread(
                partial(self.states.retire, [r.name for r in self.config.rules], now=now)
            )
        except Exception as exc:  # the database away: only the database rule can speak
            report.errors["(state)"] = type(exc).__name__
            await self._without_store(database, report)
            return report
        await self._recovered_while_away(database, report)
        await self._prune(now)
        try:
            repeats = {r.name: self.config.repeat_minutes(r) for r in self.config.rules}
            notices = await asyncio.to_thread(
                partial(self.states.claim_notices, self.node, repeats, now=now)
            )
        except Exception as exc:
            report.errors["(notices)"] = type(exc).__name__
            return report
        for notice in notices:
            await self._send(notice, report, now)
        return report

    async def _prune(self, now: datetime) -> None:
        """The history past its time (engine/alerts/state.py KEEP), once an hour."""
        if self._pruned is not None and time.monotonic() - self._pruned < 3600:
            return
        self._pruned = time.monotonic()
        try:
            gone = await asyncio.to_thread(partial(self.states.prune, now=now))
        except Exception as exc:  # next hour
            log.warning("alert history not pruned", extra={"error": type(exc).__name__})
            return
        if gone:
            log.info("alert history pruned", extra={"rows": gone})

    async def _probe(self) -> list[Finding]:
        rules = [r for r in self.config.rules if isinstance(r, Database)]
        if not rules:
            return []
        limit = max(r.max_query_ms for r in rules) / 1000 * 3 + 5
        elapsed: float | None = None
        error: str | None = None
        try:
            elapsed = await asyncio.wait_for(
                asyncio.to_thread(probe_database, self.db_engine), limit
            )
        except TimeoutError:
            error = f"no answer in {limit:.0f} s"
        except Exception as exc:
            error = type(exc).__name__
        return [database_finding(rule, elapsed, error) for rule in rules]

    def _channels(self, rule_name: str) -> list[str]:
        try:
            rule = self.config.rule(rule_name)
        except KeyError:
            return []
        names = self.config.channels_of(rule)
        return [n for n in names if n in self.config.channels and self.config.channels[n].enabled]

    async def _deliver(
        self, notice: Notice, channels: list[str], report: RunReport
    ) -> tuple[list[str], dict[str, str]]:
        title, text = notice_text(notice, self.settings.timezone)
        delivered: list[str] = []
        failed: dict[str, str] = {}
        for name in channels:
            try:
                await send(self.config.channels[name], title, text)
            except Exception as exc:
                why = str(exc) if exc.__class__.__name__ == "ChannelError" else type(exc).__name__
                failed[name] = why or type(exc).__name__
                log.warning(
                    "alert notice not sent",
                    extra={"rule": notice.rule, "channel": name, "error": failed[name]},
                )
                report.sent.append((notice.rule, notice.subject, notice.notice, name, why))
                continue
            delivered.append(name)
            report.sent.append((notice.rule, notice.subject, notice.notice, name, None))
            log.info(
                "alert notice sent",
                extra={"rule": notice.rule, "notice": notice.notice, "channel": name},
            )
        return delivered, failed

    async def _send(self, notice: Notice, report: RunReport, now: datetime) -> None:
        channels = self._channels(notice.rule)
        todo = [c for c in channels if c not in notice.sent_to]
        delivered, failed = await self._deliver(notice, todo, report)
        try:
            await asyncio.to_thread(
                partial(
                    self.states.finish_notice,
                    notice,
                    self.node,
                    channels=channels,
                    delivered=delivered,
                    failed=failed,
                    now=now,
                )
            )
        except Exception as exc:  # its claim runs out; the notice is owed again then
            report.errors["(finish)"] = type(exc).__name__

    async def _without_store(self, database: list[Finding], report: RunReport) -> None:
        """The store cannot record: the database rule's raise, sent from memory, once."""
        now = datetime.now(UTC)
        for finding in database:
            if not finding.raised or finding.rule in self._held:
                continue
            notice = Notice(
                finding.rule, "", finding.kind, "raise", finding.summary, now, None, frozenset()
            )
            delivered, _ = await self._deliver(notice, self._channels(finding.rule), report)
            if delivered:
                self._held[finding.rule] = notice

    async def _recovered_while_away(self, database: list[Finding], report: RunReport) -> None:
        """The store answers again: the recovery of what was raised from memory."""
        for finding in database:
            held = self._held.get(finding.rule)
            if held is None or finding.raised:
                continue
            recovered = Notice(
                held.rule,
                "",
                held.kind,
                "recover",
                finding.summary,
                held.raised_at,
                datetime.now(UTC),
                frozenset(),
            )
            delivered, _ = await self._deliver(recovered, self._channels(held.rule), report)
            if delivered:
                del self._held[finding.rule]


def load_for(settings: Settings) -> AlertConfig:
    """The alert rules the settings' routes directory holds (its ``alerts.yaml``)."""
    return load_alert_rules(settings.routes_dir)


async def run_alerts(
    settings: Settings,
    db_engine: Engine,
    node: str,
    stop: asyncio.Event,
    leading: Callable[[], bool] | None = None,
    away_notices: bool = True,
) -> None:
    """Evaluate every ``ENGINE_ALERTS_INTERVAL_S`` until ``stop``; the worker's task. A file
    that does not load (checked by ``engine serve`` and every reload before it runs here) is
    logged, and nothing is evaluated. ``leading``: whether this node leads now (None: it does).
    ``away_notices``: whether this process, not leading, says the database does not answer
    (the first worker process of an ``engine serve`` does, so that a host says it once)."""
    try:
        config = await asyncio.to_thread(load_for, settings)
    except Exception as exc:
        log.error("alert rules not loaded", extra={"error": str(exc)[:500]})
        return
    if not config.rules:
        return
    runner = AlertRunner(config, db_engine, settings, node or socket.gethostname())
    runner.away_notices = away_notices
    log.info("alerts evaluated on a schedule", extra={"rules": len(config.rules)})
    while not stop.is_set():
        try:
            report = await runner.run_once(leading=leading is None or leading())
            if report.transitions:
                log.info(
                    "alerts changed",
                    extra={"changes": [f"{r}/{s}: {e}" for r, s, e in report.transitions]},
                )
            if report.errors:
                log.warning("alert rules not evaluated", extra={"errors": report.errors})
        except Exception as exc:  # never the worker's end: next time
            log.warning("alert evaluation failed", extra={"error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.alerts_interval_s)
