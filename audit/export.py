"""Streaming CSV and JSON exports of audit rows, in constant memory.

An auditor downloads months of entries at once, so the CSV path is built for
throughput as well as memory (bench/export.py measures it against the
databases' own CSV tools). The format is the same on every path: a header
row, ``\\n`` line ends, the id bare and every other cell in double quotes
(``csv.QUOTE_NONNUMERIC``; quotes inside doubled), a cell starting with
``= + - @`` TAB CR LF or NUL prefixed with ``'`` (reversibly: see
``audit.exportfile``, which also reads exports back and verifies them). The
columns are the contract's, then the other fields the hash covers (request
id, stream id, and ``before``/``after`` as JSON text, ``null`` for none), so
that a CSV export can be verified on its own. Quoting every text cell is what
lets the database write the CSV itself:

- PostgreSQL: ``COPY (SELECT ...) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE ...)``.
- SQLite: keyset batches, each assembled by SQLite into one string
  (``printf('"%w"', ...)`` quotes a cell, ``group_concat`` joins the rows).
- Any other database: ``write_csv``, the plain reference the fast paths are
  tested against.

In the database's output a formula-like cell is always ``,"`` followed by one
of those characters, or by ``'``s and one of them (inside a quoted cell a ``"``
is doubled, so the sequence cannot occur there): one regular-expression pass per chunk finds them, and
only those cells are touched.
"""
from __future__ import annotations

import csv
import io
import json
import queue
import re
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from sqlalchemy import Engine, LargeBinary, String, Text, bindparam, cast, func, select, type_coerce
from sqlalchemy.orm import Session, sessionmaker

from audit.exportfile import CSV_COLUMNS, FORMULA_START, JSON_COLUMNS, csv_safe
from audit.queries import AuditFilter, entry_dict, iterate, scoped
from scope.models import AuditEntry

__all__ = ["CSV_COLUMNS", "FORMULA_START", "csv_safe", "csv_row", "write_csv", "write_json", "write_export"]

T = TypeVar("T")
TEXT_COLUMNS = CSV_COLUMNS[2:]
CHUNK = 256 * 1024  # bytes per yielded piece: few writes to the socket, small enough to stay flat
BATCH = 10_000  # rows per keyset query on SQLite
_HEADER = ",".join(CSV_COLUMNS) + "\n"
_FORMULA = re.compile(rb',"\'*[=+\-@\t\r\n\x00]')


def csv_row(e: Any) -> list[Any]:
    """A row's cells in CSV_COLUMNS order (before escaping): the id an int, the time ISO text,
    ``before``/``after`` as the JSON text they are stored as."""
    d = entry_dict(e)
    return [d[c] if c not in JSON_COLUMNS else json.dumps(d[c]) for c in CSV_COLUMNS]


def write_csv(rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The reference CSV writer: rows in CSV_COLUMNS order, the id an int, the time ISO text."""
    buf = io.StringIO()
    buf.write(_HEADER)
    w = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    for row in rows:
        w.writerow([row[0], *[csv_safe(c) for c in row[1:]]])
        if buf.tell() >= CHUNK:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def write_json(rows: Iterable[dict[str, object]]) -> Iterator[str]:
    """One JSON array, one entry per line, yielded in pieces."""
    parts = ["["]
    size, first = 1, True
    for row in rows:
        text = ("" if first else ",") + "\n" + json.dumps(row, ensure_ascii=False, separators=(",", ":"))
        parts.append(text)
        size += len(text)
        first = False
        if size >= CHUNK:
            yield "".join(parts)
            parts, size = [], 0
    parts.append("\n]\n")
    yield "".join(parts)


def guard_formulas(data: bytes) -> bytes:
    """Prefix ' to every quoted cell of database-written CSV that starts like a formula."""
    starts = [m.start() + 2 for m in _FORMULA.finditer(data)]
    if not starts:
        return data
    parts, prev = [], 0
    for s in starts:
        parts += [data[prev:s], b"'"]
        prev = s
    parts.append(data[prev:])
    return b"".join(parts)


# ---- the paths ---------------------------------------------------------------------------
def _engine(sessions: sessionmaker[Session]) -> Engine:
    return sessions.kw["bind"]


def _reference_csv(sessions: sessionmaker[Session], flt: AuditFilter,
                   environments: list[str] | None) -> Iterator[bytes]:
    rows = (csv_row(r) for r in iterate(sessions, flt, environments))
    for piece in write_csv(rows):
        yield piece.encode()


def _sqlite_csv(sessions: sessionmaker[Session], flt: AuditFilter, environments: list[str] | None,
                batch: int = BATCH) -> Iterator[bytes]:
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC here): the ISO text is
    # one replace away, identical to entry_dict's (the tests hold the paths together).
    fmt = ",".join(['%d', '"%sZ"'] + ['"%w"'] * len(TEXT_COLUMNS))
    line = func.printf(fmt, AuditEntry.id, func.replace(type_coerce(AuditEntry.time, String), " ", "T"),
                       *[_text_column(c) for c in TEXT_COLUMNS])
    inner = scoped(flt.apply(select(AuditEntry.id.label("id"), line.label("line"))), environments) \
        .where(AuditEntry.id > bindparam("last")).order_by(AuditEntry.id).limit(batch).subquery()
    q = select(func.count(), func.min(inner.c.id), func.max(inner.c.id),
               cast(func.group_concat(inner.c.line, "\n"), LargeBinary))
    yield _HEADER.encode()
    for n, first, last, data in _prefetched(lambda: _sqlite_batches(_engine(sessions), q)):
        # group_concat keeps the subquery's (id) order in practice, though SQLite does not promise
        # it: the ends are checked, and a batch that fails the check is read row by row instead.
        if data.startswith(b"%d," % first) and (n == 1 or data.rfind(b"\n%d," % last) != -1):
            yield guard_formulas(data) + b"\n"
        else:
            yield "".join(write_csv(r for r in _rows_between(sessions, flt, environments, first, last))) \
                .removeprefix(_HEADER).encode()


def _sqlite_batches(engine: Engine, q: Any) -> Iterator[tuple[int, int, int, bytes]]:
    last = 0
    with engine.connect() as conn:
        while True:
            n, first, last_in_batch, data = conn.execute(q, {"last": last}).one()
            if not n:
                return
            yield n, first, last_in_batch, data
            last = last_in_batch


def _rows_between(sessions: sessionmaker[Session], flt: AuditFilter, environments: list[str] | None,
                  first: int, last: int) -> Iterator[list[Any]]:
    q = scoped(flt.apply(select(*AuditEntry.__table__.columns)), environments) \
        .where(AuditEntry.id >= first, AuditEntry.id <= last).order_by(AuditEntry.id)
    with sessions() as s:
        for r in s.execute(q):
            yield csv_row(r)


_DONE = object()


def _prefetched(produce: Callable[[], Iterator[T]], depth: int = 2) -> Iterator[T]:
    """``produce()``'s items, made by a thread up to ``depth`` items ahead.

    SQLite runs a batch's query without holding the GIL, so the next batch is read while this one
    is sent. Memory stays bounded (``depth`` batches), and a consumer that stops early (the
    client hung up) stops the thread after its current batch.
    """
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            put(e)

    worker = threading.Thread(target=run, name="audit-export-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)


def _text_column(name: str) -> Any:
    """A CSV column as the database's text: JSON documents as stored (SQL NULL as ``null``)."""
    col = getattr(AuditEntry, name)
    if name in JSON_COLUMNS:
        return func.coalesce(type_coerce(col, Text), "null")
    return col


def _pg_csv(sessions: sessionmaker[Session], flt: AuditFilter, environments: list[str] | None) -> Iterator[bytes]:
    cols = [AuditEntry.id.label("id"),
            func.to_char(func.timezone("UTC", AuditEntry.time), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"').label("time"),
            *[(func.coalesce(cast(getattr(AuditEntry, c), Text), "null") if c in JSON_COLUMNS
               else getattr(AuditEntry, c)).label(c) for c in TEXT_COLUMNS]]
    q = scoped(flt.apply(select(*cols)), environments).order_by(AuditEntry.id)
    engine = _engine(sessions)
    compiled = q.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    # COPY takes no server-side parameters; psycopg binds them client-side, quoted as literals.
    sql = (f"COPY ({compiled.string}) TO STDOUT WITH (FORMAT csv, HEADER, "
           f"FORCE_QUOTE ({', '.join(CSV_COLUMNS[1:])}))")
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(sql, compiled.params) as copy:  # type: ignore[attr-defined]
            buf = bytearray()
            for data in copy:  # one row per item: gather them into larger writes
                buf += data
                if len(buf) >= CHUNK:
                    yield guard_formulas(bytes(buf))
                    buf.clear()
            if buf:
                yield guard_formulas(bytes(buf))
    finally:
        raw.close()  # back to the pool, which rolls the read transaction back


def write_export(sessions: sessionmaker[Session], flt: AuditFilter, fmt: str,
                 environments: list[str] | None = None) -> Iterator[bytes]:
    """The matching entries (oldest first) as CSV or JSON bytes, in pieces."""
    if fmt == "json":
        return (piece.encode() for piece in write_json(
            entry_dict(r) for r in iterate(sessions, flt, environments)))
    dialect = _engine(sessions).dialect.name
    if dialect == "postgresql":
        return _pg_csv(sessions, flt, environments)
    if dialect == "sqlite":
        return _sqlite_csv(sessions, flt, environments)
    return _reference_csv(sessions, flt, environments)
