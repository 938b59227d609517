"""Streaming CSV and JSON exports of audit rows, in constant memory."""
from __future__ import annotations

import csv
import io
import json
from typing import Iterator

from sqlalchemy.orm import Session, sessionmaker

from audit.queries import AuditFilter, entry_dict, iterate

CSV_COLUMNS = ("id", "time", "actor", "source", "environment", "action", "target", "outcome", "detail", "job_id")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: object) -> str:
    """Neutralise spreadsheet formulas: a cell starting with = + - @ TAB or CR gets a leading '."""
    s = "" if value is None else str(value)
    return "'" + s if s.startswith(_FORMULA_START) else s


def write_csv(rows: Iterator[dict[str, object]], flush_every: int = 500) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    n = 0
    for row in rows:
        w.writerow([csv_safe(row[c]) for c in CSV_COLUMNS])
        n += 1
        if n % flush_every == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def write_json(rows: Iterator[dict[str, object]], flush_every: int = 200) -> Iterator[str]:
    parts = ["["]
    first = True
    n = 0
    for row in rows:
        parts.append(("" if first else ",") + "\n" + json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        first = False
        n += 1
        if n % flush_every == 0:
            yield "".join(parts)
            parts = []
    parts.append("\n]\n")
    yield "".join(parts)


def write_export(sessions: sessionmaker[Session], flt: AuditFilter, fmt: str,
                 environments: list[str] | None = None) -> Iterator[str]:
    rows = (entry_dict(e, full=fmt == "json") for e in iterate(sessions, flt, environments))
    return write_csv(rows) if fmt == "csv" else write_json(rows)
