"""``column IN (a list bound when the statement runs)``, one statement text whatever its length.

SQLAlchemy's expanding parameters (``bindparam(..., expanding=True)``) render ``IN (?, ?, ...)``
with one placeholder per value when the statement runs, so each length of list is a statement
text of its own: SQLite compiles each anew and keeps it in the connection's statement cache (128
texts a connection), and SQLAlchemy rewrites the SQL on every execution. The worker's lists
(the deliveries claimed, the outcomes recorded, the messages settled) have every length from 1
to 50 or more: in 10 minutes at 200 messages/s (5 December, memray in the worker) the compiled
statements those connections held were 7.1 MB of the 9.8 MB the worker allocated after warm-up
and still held.

On SQLite the list is bound as one JSON text and read with ``json_each``: one text, compiled
once per connection, and SQLite still looks each value up in the index or primary key
(EXPLAIN: ``LIST SUBQUERY``, ``SEARCH ... USING INTEGER PRIMARY KEY (rowid=?)``); an execution
costs less CPU too (0.24 against 0.32 ms for 1-50 ids, 3,000 executions, same connection).
PostgreSQL keeps the expanding form.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import BindParameter, Boolean, String, TypeDecorator, bindparam
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

__all__ = ["in_list", "json_rows", "json_rows_counted", "not_in_list"]


class _JsonList(TypeDecorator[Any]):
    """A list of values bound as one JSON array text."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Iterable[Any] | None, dialect: Any) -> str | None:
        return None if value is None else orjson.dumps(list(value)).decode()


class InList(ColumnElement[bool]):
    """``column [NOT] IN`` the list given at execution as parameter ``name``."""

    __visit_name__ = "engine_in_list"
    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a comparison already: no "= 1" after it on SQLite
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
        ("negate", InternalTraversal.dp_boolean),
    ]

    def __init__(self, column: ColumnElement[Any], name: str, negate: bool) -> None:
        self.column = column
        self.name = name
        self.negate = negate


@compiles(InList)
def _expanding(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    values: BindParameter[Any] = bindparam(element.name, expanding=True)
    clause = element.column.notin_(values) if element.negate else element.column.in_(values)
    return compiler.process(clause, **kw)


@compiles(InList, "sqlite")
def _json_each(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    values = compiler.process(bindparam(element.name, type_=_JsonList()), **kw)
    return (
        f"{column} {'NOT IN' if element.negate else 'IN'} (SELECT value FROM json_each({values}))"
    )


def in_list(column: ColumnElement[Any], name: str = "ids") -> InList:
    """``column IN`` the list passed as ``name`` when the statement runs."""
    return InList(column, name, False)


def not_in_list(column: ColumnElement[Any], name: str) -> InList:
    """``column NOT IN`` the list passed as ``name`` when the statement runs."""
    return InList(column, name, True)


#: the bytes of rows that one :func:`json_rows` text holds at most (beyond a single row's own)
JSON_ROWS_BYTES = 32 << 20


def json_rows(rows: Sequence[dict[str, Any]], limit: int | None = None) -> Iterator[str]:
    """``rows`` as JSON array texts, in their order, each at most ``limit`` bytes (default
    :data:`JSON_ROWS_BYTES`) unless a single row is larger: one statement's rows for
    ``json_to_recordset`` (PostgreSQL refuses a value over 1 GB, and a batch of large
    messages' payloads may come near it; a text per few MB keeps the worker's copies small)."""
    for _, text in json_rows_counted(rows, limit):
        yield text


def json_rows_counted(
    rows: Sequence[dict[str, Any]], limit: int | None = None
) -> Iterator[tuple[int, str]]:
    """As :func:`json_rows`, each text with how many of the rows it holds (for a caller that
    maps what each statement returns back to its rows)."""
    cap = JSON_ROWS_BYTES if limit is None else limit
    chunk: list[bytes] = []
    size = 2  # the text's length so far: its brackets and each row's text and comma
    for row in rows:
        item = orjson.dumps(row)
        if chunk and size + 1 + len(item) > cap:
            yield len(chunk), (b"[" + b",".join(chunk) + b"]").decode()
            chunk, size = [], 2
        size += len(item) + (1 if chunk else 0)
        chunk.append(item)
    if chunk:
        yield len(chunk), (b"[" + b",".join(chunk) + b"]").decode()
