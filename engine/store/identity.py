"""The store's identity: what names one shared database the same on every node that uses it.

A destination that cannot tell a redelivery from a new message by itself (a file folder) puts a
tag in its names, so that a message delivered again — after a node died between writing the file
and recording the delivery, and another node took its claim over — finds its first copy instead
of making a second. That tag must name the *store* the nodes share, not the node: two
``engine serve`` nodes on one PostgreSQL database and schema must agree on it, two engines on
separate databases (whose message ids both start at 1) must differ.

* PostgreSQL: 8 hex digits of the SHA-256 of the cluster's system identifier
  (``pg_control_system()``, PostgreSQL 9.6+: chosen by ``initdb``, kept by physical replicas, so
  a promoted standby keeps it), the database (``current_database()``) and the schema the tables
  live in (``current_schema()``, the first existing schema of the ``search_path``). Read once,
  when a worker opens the store.
* SQLite: no tag (None). The database is the engine home's, so the engine's own tag (host and
  home, :func:`engine.adapters.files.engine_tag`) names it already, and existing sites' file
  names stay as they were.

When the system identifier cannot be read (a provider that revokes ``pg_control_system`` from
ordinary roles), the answer is None too, with a warning: each node then names files with its own
tag — a redelivery across nodes may leave a second copy (at least once), but two separate
databases never share a tag (which would make one engine's file pass for another's: a loss).

Incomplete: the tag changes when the store moves to another cluster (``pg_dump``/``pg_restore``,
a logical replica; possibly ``pg_upgrade`` into a new ``initdb``, not checked) or schema, and on
the upgrade that brought it (PostgreSQL sites named files by host and home before): a message
delivered before the change and delivered again after it (one in flight, or an operator's
resend) is written a second time — at least once, never lost.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

__all__ = ["database_tag"]

log = logging.getLogger(__name__)


def database_tag(db_engine: Engine) -> str | None:
    """8 hex digits naming the shared database (PostgreSQL), or None where the engine's own
    tag names it (SQLite), or where the cluster's identity cannot be read (see the module
    docstring)."""
    if db_engine.dialect.name != "postgresql":
        return None
    with db_engine.connect() as conn:
        database, schema = conn.execute(text("SELECT current_database(), current_schema()")).one()
        try:
            with conn.begin_nested():
                system = conn.execute(
                    text("SELECT system_identifier FROM pg_control_system()")
                ).scalar_one()
        except DBAPIError as exc:
            log.warning(
                "the PostgreSQL cluster's identity cannot be read: each node names its files "
                "with its own tag (a redelivery across nodes may write a second copy)",
                extra={"error": type(getattr(exc, "orig", exc)).__name__},
            )
            return None
    if schema is None:  # no schema of the search_path exists: no store to name
        return None
    who = f"postgresql\0{system}\0{database}\0{schema}".encode()
    return hashlib.sha256(who).hexdigest()[:8]
