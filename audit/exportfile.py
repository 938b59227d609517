"""The export file format, read back: the CSV columns, the formula escape and its exact inverse, and
the offline verifier of a CSV or JSON export (``valetkey audit verify --file``).

Pure: no database, Redis, AWS or settings. Each entry's hash is recomputed with
``audit.chain.entry_hash``, the same function the exporter writes with and the
database verifier checks with.

The formula escape (OWASP "CSV injection"): a cell whose first character is one of
``= + - @`` TAB CR LF NUL gets a leading ``'``. So that the verifier can undo it
exactly, a cell that already starts with one or more ``'`` followed by one of those
characters gets one more: ``csv_unsafe`` removes one ``'`` from a cell of the form
``'…'<dangerous>…`` and leaves every other cell alone, so ``csv_unsafe(csv_safe(s)) == s``
for every ``s``, and every escaped cell still starts with ``'``.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

from audit.chain import GENESIS, entry_hash

# The contract's columns (the first ten fixed, later ones only ever appended), then the stored
# fields the hash also covers, so that a CSV export can be verified on its own.
CONTRACT_COLUMNS = ("id", "time", "actor", "source", "environment", "action", "target", "outcome", "detail",
                    "job_id", "reason", "prev_hash", "hash")
CSV_COLUMNS = (*CONTRACT_COLUMNS, "request_id", "stream_id", "before", "after")
JSON_COLUMNS = ("before", "after")  # CSV cells holding a JSON document ("null" for none)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\x00")
_ESCAPED = re.compile(r"'+[=+\-@\t\r\n\x00]")
from scope.times import parse_iso


def csv_safe(value: object) -> str:
    """The cell text: a leading ' before a formula-like start (and before a run of ' that precedes one)."""
    s = "" if value is None else str(value)
    if s.startswith(FORMULA_START) or (s.startswith("'") and s.lstrip("'").startswith(FORMULA_START)):
        return "'" + s
    return s


def csv_unsafe(cell: str) -> str:
    """The exact inverse of ``csv_safe``."""
    return cell[1:] if _ESCAPED.match(cell) else cell


# ---- reading an export back ------------------------------------------------------------------
class ExportFormatError(Exception):
    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where, self.why = where, why


parse_time = parse_iso


def _entry(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Typed values for hashing: int id, aware time; every stored field present."""
    missing = [c for c in CSV_COLUMNS if c not in raw and c != "reason"]
    if missing:
        raise ExportFormatError(where, f"no {', '.join(missing)} (not a complete Valet Key export)")
    e = dict(raw)
    try:
        e["id"] = int(raw["id"])
        e["time"] = parse_time(str(raw["time"]))
    except (TypeError, ValueError):
        raise ExportFormatError(where, f"unreadable id or time ({str(raw.get('id'))[:40]!r}, "
                                       f"{str(raw.get('time'))[:40]!r})") from None
    e.setdefault("reason", "")
    return e


def _lines(f: IO[str], size: int = 1 << 16) -> Iterator[str]:
    """The text in lines ended by LF only (the export's line end; a CR inside a cell is data), so
    that line numbers are the ones ``grep -n`` and editors show."""
    buf = ""
    while chunk := f.read(size):
        buf += chunk
        *full, buf = buf.split("\n")
        for ln in full:
            yield ln + "\n"
    if buf:
        yield buf


def read_csv(f: IO[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, entry) per record; ``where`` names the line the record starts on."""
    reader = csv.reader(_lines(f))
    header = next(reader, None)
    if header is None:
        raise ExportFormatError("line 1", "the file is empty")
    if tuple(header[:len(CSV_COLUMNS)]) != CSV_COLUMNS:
        raise ExportFormatError("line 1", f"the header is not {','.join(CSV_COLUMNS)}")
    start = reader.line_num + 1
    for cells in reader:
        where = f"line {start}"
        start = reader.line_num + 1
        if len(cells) < len(CSV_COLUMNS):
            raise ExportFormatError(where, f"{len(cells)} cells, expected {len(CSV_COLUMNS)}")
        raw: dict[str, Any] = {c: csv_unsafe(v) for c, v in zip(CSV_COLUMNS, cells)}
        for c in JSON_COLUMNS:
            try:
                raw[c] = json.loads(raw[c]) if raw[c] else None
            except ValueError:
                raise ExportFormatError(where, f"the {c} cell is not JSON") from None
        yield where, _entry(raw, where)


def read_json(f: IO[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, entry) per array element. The export writes one entry per line, read as such;
    any other layout of the same array is read whole and its entries are numbered instead."""
    text = f.read()
    lines = text.split("\n")
    if lines and lines[0].strip() == "[" and all(ln.strip() in ("]", "") for ln in lines[-2:]):
        out = []
        try:
            for n, ln in enumerate(lines[1:], start=2):
                body = ln.strip().removeprefix(",").removesuffix(",").strip()
                if body in ("]", ""):
                    continue
                out.append((f"line {n}", json.loads(body)))
        except ValueError:
            out = []
        else:
            for where, raw in out:
                if not isinstance(raw, dict):
                    raise ExportFormatError(where, "not a JSON object")
                yield where, _entry(raw, where)
            return
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ExportFormatError(f"line {e.lineno}" if hasattr(e, "lineno") else "the file",
                                "not JSON") from None
    if not isinstance(data, list):
        raise ExportFormatError("the file", "not a JSON array of entries")
    for n, raw in enumerate(data, start=1):
        where = f"entry #{n} of the array"
        if not isinstance(raw, dict):
            raise ExportFormatError(where, "not a JSON object")
        yield where, _entry(raw, where)


def sniff(f: IO[str]) -> str:
    """'json' if the first non-blank character is '[', else 'csv'."""
    head = f.read(64)
    f.seek(0)
    return "json" if head.lstrip().startswith("[") else "csv"


# ---- verifying -------------------------------------------------------------------------------
@dataclass
class FileVerifyResult:
    ok: bool
    entries: int = 0
    links: int = 0  # consecutive ids whose prev_hash was checked against the entry before
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (id before, id after) of each gap
    first_id: int | None = None
    last_id: int | None = None
    last_hash: str = ""
    from_genesis: bool = False  # the export starts at entry 1, whose prev_hash was checked to be genesis
    where: str = ""
    bad_id: int | None = None
    reason: str = ""


def verify_entries(entries: Iterator[tuple[str, dict[str, Any]]], allow_gaps: bool = False) -> FileVerifyResult:
    """Each entry's hash over its fields; each link between consecutive ids; gaps only with ``allow_gaps``."""
    res = FileVerifyResult(ok=True)

    def bad(where: str, rid: int | None, why: str) -> FileVerifyResult:
        res.ok, res.where, res.bad_id, res.reason = False, where, rid, why
        return res

    prev: dict[str, Any] | None = None
    try:
        for where, e in entries:
            rid = e["id"]
            if entry_hash(e, e["prev_hash"]) != e["hash"]:
                return bad(where, rid, "its hash does not match its content: the entry was altered")
            if prev is None:
                res.first_id = rid
                if rid == 1:
                    if e["prev_hash"] != GENESIS:
                        return bad(where, rid, "entry 1 does not start from the genesis hash")
                    res.from_genesis = True
            elif rid <= prev["id"]:
                return bad(where, rid, f"out of order: entry {rid} comes after entry {prev['id']}")
            elif rid == prev["id"] + 1:
                if e["prev_hash"] != prev["hash"]:
                    return bad(where, rid, f"its prev_hash does not match entry {prev['id']}: the entry "
                                           f"before it was altered or replaced")
                res.links += 1
            else:
                if not allow_gaps:
                    missing = (f"entry {prev['id'] + 1} is" if rid == prev["id"] + 2
                               else f"entries {prev['id'] + 1}-{rid - 1} are")
                    return bad(where, rid, f"{missing} missing after entry {prev['id']}: deleted, or the "
                                           "export was filtered (then verify with --allow-gaps)")
                res.gaps.append((prev["id"], rid))
            res.entries += 1
            res.last_id, res.last_hash = rid, e["hash"]
            prev = e
    except ExportFormatError as x:
        return bad(x.where, None, x.why)
    return res


def verify_file(f: IO[str], fmt: str | None = None, allow_gaps: bool = False) -> FileVerifyResult:
    """Verify an export read from ``f`` (opened with ``newline=""``); ``fmt`` 'csv', 'json' or None to sniff."""
    fmt = fmt or sniff(f)
    try:
        entries = read_json(f) if fmt == "json" else read_csv(f)
        return verify_entries(entries, allow_gaps=allow_gaps)
    except ExportFormatError as x:
        return FileVerifyResult(ok=False, where=x.where, reason=x.why)


def verify_text(text: str, fmt: str | None = None, allow_gaps: bool = False) -> FileVerifyResult:
    return verify_file(io.StringIO(text, newline=""), fmt, allow_gaps)


def summary(res: FileVerifyResult) -> str:
    """The one line ``valetkey audit verify --file`` prints."""
    if not res.ok:
        entry = f" (entry {res.bad_id})" if res.bad_id is not None else ""
        return (f"export BROKEN at {res.where}{entry}: {res.reason} "
                f"({res.entries} entries verified before it)")
    if not res.entries:
        return "export intact: 0 entries"
    start = "from the start of the chain" if res.from_genesis else f"from entry {res.first_id}"
    return (f"export intact: {res.entries} entries {start} to entry {res.last_id}, {res.links} links checked, "
            f"{len(res.gaps)} gaps; last: entry {res.last_id} hash {res.last_hash}")
