"""Who runs the engine, for the console's dashboard (issue 14): the nodes (worker processes and
``engine serve`` receivers) with their heartbeats, the one that holds the scheduler's
leadership, and the configuration generation each node runs, beside the one last published.

Three small reads, cheap at any traffic (none touches messages or deliveries): the ``nodes``
rows (one per running worker process and per running receiver; a stopped one deletes its own,
a dead one is deleted a day after its last heartbeat, engine/store/nodes.py), the one
``config_generation`` row and the ``config_applied`` rows (one per node that has taken or
refused a generation), and on PostgreSQL the holder of the leader's advisory lock from
``pg_locks`` (engine/jobs/leader.py: the lock's connection carries the node's id as its
``application_name``). On SQLite the first worker process of the one ``engine serve`` leads
while it lives (role ``worker``, or ``worker 1`` of several: ``worker_role``); while it is dead
(its receiver starts it again) nobody does.

Which node runs which generation: ``config_applied`` names the process that follows the
generation (engine/flow/config.py's ``Reloader``): an ``engine worker`` is one process, so its
row shares its worker node's ``host:pid``; an ``engine serve`` follows it in its receiver, a
node of its own (role ``receiver``, the row's id), whose worker process (a ``worker`` node)
runs the receiver's configuration. Every node, a receiver too, beats its heartbeat every 2 s
and is alive while it is younger than the takeover limit (10 s unless ``ENGINE_NODE_DEAD_AFTER_S``
says otherwise; the longest a node that may be alive registered, when longer): a killed
``engine serve`` shows its receiver dead, and a stopped one is gone with its configuration row
(engine/service.py's ``keep_receiver``). A configuration row without a node (an engine older
than the receiver's heartbeat) is listed as a receiver whose heartbeat is not known.

A running node answers a new generation within seconds (it polls it every 3 s and records that
it took it, or why it refused it), so a row that has not answered it :data:`ANSWER_S` after it
was published belongs to a node that is behind: stopped (killed: its row stays until it is
pruned), or not following. Rows without a node are listed for :data:`SHOWN_FOR` after their
last record when they have not taken the current generation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, or_, select, text

from engine.store.db import Repository, aware, utcnow
from engine.store.nodes import FORGET_AFTER, MAX_DEAD_AFTER, SQLITE_LEADING_ROLES, longest_limit
from engine.store.tables import config_applied, config_generation, nodes

__all__ = ["ANSWER_S", "SHOWN_FOR", "ClusterState", "NodeState"]

#: a running node takes (or refuses) a new generation within this many seconds of it being
#: published (it looks every 3 s: engine/flow/config.py's FOLLOW_EVERY_S)
ANSWER_S = 15.0
#: a configuration row without a node that is not the current generation's is listed this long
#: after it was last written (as long as a dead node's row is kept)
SHOWN_FOR = FORGET_AFTER


@dataclass(frozen=True)
class NodeState:
    """One node as the dashboard shows it."""

    id: str
    #: ``worker`` (it claims work and campaigns to lead) or ``receiver`` (an ``engine
    #: serve``'s listeners, which follow the configuration)
    role: str
    host: str
    started_at: datetime | None = None
    #: seconds since its last heartbeat (None: not known, a configuration row without a node)
    heartbeat_age_s: float | None = None
    #: its heartbeat is younger than the takeover limit (nodes.dead_after; None: not known)
    alive: bool | None = None
    leader: bool = False
    #: the generation it runs or refused, and ``applied`` or ``refused`` (None: it
    #: has no row, such as an ``engine serve``'s worker process or before any reload)
    generation: int | None = None
    config_status: str | None = None
    config_detail: str | None = None
    config_at: datetime | None = None
    #: ``current``, ``taking`` (published less than ANSWER_S ago), ``behind``, or ``""`` (no row)
    config_state: str = ""


@dataclass(frozen=True)
class ClusterState:
    """The nodes, who leads, and the configuration generation last published."""

    nodes: tuple[NodeState, ...] = ()
    #: the last published generation (None: no reload was ever published; every node runs the
    #: files it started with)
    generation: int | None = None
    published_by: str | None = None
    published_at: datetime | None = None
    #: the node holding the leadership; on PostgreSQL a holder not among the nodes (an engine
    #: older than this page) is ``"?"``; None: no node leads now
    leader: str | None = None

    @property
    def behind(self) -> tuple[NodeState, ...]:
        """The nodes not on the current generation (refused it, or have not answered it)."""
        return tuple(n for n in self.nodes if n.config_state == "behind")

    @property
    def same_generation(self) -> bool:
        """Every node with a configuration row runs the current generation (or is taking it)."""
        return not self.behind


_NODES = select(
    nodes.c.id,
    nodes.c.role,
    nodes.c.host,
    nodes.c.started_at,
    nodes.c.heartbeat_at,
    nodes.c.dead_after_s,
).order_by(nodes.c.started_at, nodes.c.id)
_GENERATION = select(
    config_generation.c.generation, config_generation.c.node, config_generation.c.at
).where(config_generation.c.id == 1)
#: the nodes' configuration rows worth showing: the current generation's, a receiver's (its id is
#: a node's), and the others for a while after they were written
_APPLIED = select(config_applied).where(
    or_(
        config_applied.c.generation >= bindparam("current"),
        config_applied.c.at >= bindparam("since"),
        config_applied.c.node.in_(select(nodes.c.id)),
    )
)
_NOW_WHERE = text("SELECT now(), current_database(), current_schema()")
#: the ``application_name`` of the session holding the leader's lock: a node's id, cut to
#: PostgreSQL's 63 characters (``""`` for an engine older than this page); no row: none leads
_LOCK_OWNER = text(
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = :key"
)


def _process(node_id: str) -> str:
    """``host:pid`` of a ``host:pid:random`` id."""
    return node_id.rsplit(":", 1)[0]


class Cluster(Repository):
    """The nodes, the leader and the configuration generations, as the dashboard shows them."""

    def cluster_state(self) -> ClusterState:
        """Every node with its heartbeat, role, leadership and configuration: one connection,
        three small reads (five on PostgreSQL, in the database's clock)."""
        with self.db_engine.connect() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                now, key = _now_and_key(conn)
            else:
                now, key = utcnow(), None
            rows = conn.execute(_NODES).all()
            published = conn.execute(_GENERATION).first()
            current = int(published.generation) if published else None
            shown = {"current": current or 0, "since": now - SHOWN_FOR}
            applied = conn.execute(_APPLIED, shown).all()
            holder = None if key is None else conn.execute(_LOCK_OWNER, {"key": key}).scalar()
        configs = {_process(r.node): r for r in applied}
        at = aware(published.at) if published else None
        listed: list[NodeState] = []
        # judged as a takeover judges them: by the longest limit of the nodes that may be alive
        recent = [r.dead_after_s for r in rows if aware(r.heartbeat_at) >= now - MAX_DEAD_AFTER]
        limit = longest_limit(max((x for x in recent if x), default=None)).total_seconds()
        for r in rows:
            age = max(0.0, (now - aware(r.heartbeat_at)).total_seconds())
            alive = age <= limit
            if postgres:  # the lock's session names its node (cut to 63 characters)
                leader = bool(holder) and str(r.id).startswith(str(holder))
            else:  # one host: its first worker process leads, while it lives
                leader = alive and r.role in SQLITE_LEADING_ROLES
            node = NodeState(r.id, r.role, r.host, aware(r.started_at), age, alive, leader)
            config = configs.pop(_process(r.id), None)
            listed.append(_with_config(node, config, current, at, now))
        for c in sorted(configs.values(), key=lambda c: str(c.node)):
            host = _process(c.node).rsplit(":", 1)[0]
            listed.append(_with_config(NodeState(c.node, "receiver", host), c, current, at, now))
        leaders = [n.id for n in listed if n.leader]
        return ClusterState(
            tuple(listed),
            current,
            published.node if published else None,
            at,
            leaders[0] if leaders else ("?" if holder is not None else None),
        )


def _now_and_key(conn: Connection) -> tuple[datetime, int]:
    """PostgreSQL: now in the database's clock, and the key of the leader's advisory lock for
    this database and schema (engine/jobs/leader.py), in one statement."""
    from engine.jobs.leader import lock_key

    now, database, schema = conn.execute(_NOW_WHERE).one()
    return aware(now), lock_key(str(database), str(schema or "public"))


def _with_config(
    node: NodeState,
    row: Any,
    current: int | None,
    published_at: datetime | None,
    now: datetime,
) -> NodeState:
    """``node`` with its configuration row and how it stands against the current generation."""
    if row is None:
        return node
    generation, status = int(row.generation), str(row.status)
    if status == "applied" and generation == current:
        state = "current"
    elif (
        status == "applied"
        and published_at is not None
        and (now - published_at).total_seconds() < ANSWER_S
    ):
        state = "taking"
    else:
        state = "behind"  # refused it, files that differ, or no answer
    return replace(
        node,
        generation=generation,
        config_status=status,
        config_detail=row.detail,
        config_at=aware(row.at),
        config_state=state,
    )
