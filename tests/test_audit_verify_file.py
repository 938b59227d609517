"""Exports verified offline (``valetkey audit verify --file``), the formula escape and its inverse,
and the ``reason`` field in the chain.

Entries reach the database the real way (AuditLog -> stream -> Exporter), on SQLite and
PostgreSQL (the ``db_url`` fixture), so each database's CSV path is what gets verified.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from audit.chain import FIELDS, GENESIS, canonical, entry_hash
from audit.export import write_export
from audit.exportfile import CONTRACT_COLUMNS, CSV_COLUMNS, FORMULA_START, csv_safe, csv_unsafe, summary, verify_text
from audit.queries import AuditFilter, verify_chain
from scope.models import AuditEntry
from tests.test_audit_exporter import ago, event, export_all, sql

ROOT = Path(__file__).resolve().parent.parent
DANGEROUS = ["=", "+", "-", "@", "\t", "\r", "\n", "\x00"]


@pytest.fixture
def trail(rt) -> Any:
    """Entries of every kind an export must carry intact: state, reasons, hostile and multi-line text."""
    rt.audit.record(event(1, time=ago(3), reason="staging down, Slack #ops"))
    rt.audit.record(event(2, outcome="succeeded", detail="HEALTHY after 38s", time=ago(2.9),
                          before={"image": "sha:a1", "running": 2}, after={"image": "sha:b2", "running": 2}))
    rt.audit.record(event(3, environment="qa", target="search-api", detail="multi\nline\r\ndetail, \"quoted\"",
                          time=ago(2)))
    rt.audit.record(event(4, action="login", environment="", target="", job_id="", actor="=cmd|' /C calc'!A0",
                          source="web", outcome="denied", detail="-2+3", time=ago(1), reason="'=already escaped?"))
    rt.audit.record(event(5, target="@SUM(A1)", detail="\ttab", reason="\nnewline first", time=ago(0.5),
                          before={"note": "ünïcødé ✓", "n": -1.5}, after=None, request_id="req-5"))
    rt.audit.record(event(6, environment="qa", detail="'+quote then plus", time=ago(0.3)))
    rt.audit.record(event(7, detail="\rCR", time=ago(0.1)))
    export_all(rt)
    return rt


def export(rt: Any, fmt: str, **flt: Any) -> str:
    return b"".join(write_export(rt.sessions, AuditFilter(**flt), fmt)).decode()


def jid(i: int) -> str:
    return f"{i:032x}"  # event(i)'s job id: a needle that appears once in either format


def line_of(text: str, needle: str) -> int:
    """The 1-based physical line on which ``needle`` starts."""
    return text[:text.index(needle)].count("\n") + 1


# ---- the format ------------------------------------------------------------------------------
def test_csv_header_order(trail):
    assert CONTRACT_COLUMNS == ("id", "time", "actor", "source", "environment", "action", "target", "outcome",
                                "detail", "job_id", "reason", "prev_hash", "hash")
    assert CSV_COLUMNS[:13] == CONTRACT_COLUMNS  # later columns only ever append
    header = export(trail, "csv").split("\n", 1)[0]
    assert header == "id,time,actor,source,environment,action,target,outcome,detail,job_id,reason,prev_hash,hash," \
                     "request_id,stream_id,before,after"


@pytest.mark.parametrize("ch", DANGEROUS, ids=[repr(c) for c in DANGEROUS])
def test_each_dangerous_first_character_is_escaped_and_undone_exactly(ch):
    assert ch in FORMULA_START
    for value in (ch, ch + "1+1", "'" + ch, "'" + ch + "x", "''" + ch + "x"):
        cell = csv_safe(value)
        assert cell == "'" + value, value  # escaped, including a value already starting with '
        assert csv_unsafe(cell) == value
    assert csv_safe("x" + ch) == "x" + ch  # only the first character counts


@pytest.mark.parametrize("value", ["", "plain", "'", "''", "'quoted", "''x", "x'=", " =lead space", '"=dq', "é"])
def test_harmless_cells_are_left_alone(value):
    assert csv_safe(value) == value and csv_unsafe(value) == value


@pytest.mark.parametrize("ch", [c for c in DANGEROUS if c != "\x00"], ids=repr)
def test_each_dangerous_first_character_through_the_database(rt, ch):
    # (NUL never reaches a row: the ledger strips it, as PostgreSQL cannot store it.)
    rt.audit.record(event(1, detail=ch + "detail", target=ch + "target", reason="'" + ch + "reason"))
    export_all(rt)
    text = export(rt, "csv")
    row = dict(zip(CSV_COLUMNS, list(csv.reader(io.StringIO(text, newline="")))[1]))
    assert row["detail"] == "'" + ch + "detail" and row["target"] == "'" + ch + "target"
    assert row["reason"] == "''" + ch + "reason"
    assert verify_text(text).ok, summary(verify_text(text))


# ---- untouched exports verify, with nothing but the file ----------------------------------------
def _bare_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Valet Key setting, secret or Redis URL."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("VALETKEY_") and not any(w in k.upper() for w in ("REDIS", "SECRET", "AWS_"))}
    return {**keep, "PYTHONUNBUFFERED": "1", **extra}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "valetkey.cli", "audit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_an_untouched_export_verifies_offline_in_a_bare_environment(trail, environ, tmp_path, fmt):
    # The export itself needs only the database URL: no catalog secrets or Redis target URLs.
    env = _bare_env(VALETKEY_DATABASE_URL=environ["VALETKEY_DATABASE_URL"],
                    VALETKEY_ENVIRONMENTS=str(tmp_path / "absent.toml"))
    made = subprocess.run([sys.executable, "-m", "valetkey.cli", "audit", "export", "--format", fmt], cwd=ROOT,
                          env=env, capture_output=True, timeout=120)
    assert made.returncode == 0, made.stderr.decode()
    assert made.stdout.decode() == export(trail, fmt)
    path = tmp_path / f"export.{fmt}"
    path.write_bytes(made.stdout)
    res = _cli("verify", "--file", str(path), env=_bare_env())  # and verifying needs nothing at all
    assert res.returncode == 0, res.stderr
    head = verify_chain(trail.sessions)
    assert res.stdout.strip() == (f"export intact: 7 entries from the start of the chain to entry 7, 6 links "
                                  f"checked, 0 gaps; last: entry 7 hash {head.head_hash}")
    assert res.stdout.count("\n") == 1 and not res.stderr


def test_the_database_verify_needs_no_catalog_secrets(trail, environ, tmp_path):
    env = _bare_env(VALETKEY_DATABASE_URL=environ["VALETKEY_DATABASE_URL"],
                    VALETKEY_ENVIRONMENTS=environ["VALETKEY_ENVIRONMENTS"])  # its url_env/secret_env unset
    res = _cli("verify", env=env)
    assert res.returncode == 0, res.stderr
    assert "audit chain intact: 7 entries" in res.stdout


def test_json_entries_carry_every_hashed_field(trail):
    js = json.loads(export(trail, "json"))
    assert js[0]["reason"] == "staging down, Slack #ops" and js[1]["reason"] == ""
    assert js[1]["before"] == {"image": "sha:a1", "running": 2} and js[4]["request_id"] == "req-5"
    assert all(set(FIELDS) | {"reason", "prev_hash", "hash"} <= set(e) for e in js)


def test_the_fast_csv_paths_carry_state_and_reasons_like_the_reference(trail):
    from audit.export import _reference_csv

    assert export(trail, "csv") == b"".join(_reference_csv(trail.sessions, AuditFilter(), None)).decode()


# ---- tampering is found, naming the first bad line ----------------------------------------------
def _fails(text: str, line: int, *words: str, fmt: str | None = None, allow_gaps: bool = False) -> str:
    res = verify_text(text, fmt, allow_gaps=allow_gaps)
    msg = summary(res)
    assert not res.ok and res.where == f"line {line}", msg
    assert all(w in msg for w in words), msg
    return msg


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_an_edited_cell_fails_naming_its_line(trail, fmt):
    text = export(trail, fmt)
    n = line_of(text, "sha:b2")
    _fails(text.replace("sha:b2", "sha:evil"), n, "entry 2", "altered", fmt=fmt)
    n = line_of(text, "quote then plus")
    _fails(text.replace("quote then plus", "quote then minus"), n, "entry 6", "altered")
    # An edit after a multi-line cell is still named by its physical line.
    assert fmt == "json" or line_of(text, "detail, \"\"quoted") + 1 < n


def test_each_edited_csv_column_is_found(trail):
    text = export(trail, "csv")
    lines = text.split("\n")
    n = line_of(text, "event 1")
    for i, col in enumerate(CSV_COLUMNS):
        cells = next(csv.reader([lines[n - 1]]))
        cells[i] = {"id": "9", "before": '{"x":1}', "after": '{"x":1}'}.get(col, cells[i] + "x")
        out = io.StringIO()
        csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator="").writerow(cells)
        edited = "\n".join(lines[:n - 1] + [out.getvalue()] + lines[n:])
        assert not verify_text(edited).ok, col


def test_escaping_is_not_confused_with_content(trail):
    text = export(trail, "csv")
    assert "\"'=cmd|' /C calc'!A0\"" in text and "\"''=already escaped?\"" in text
    # A spreadsheet that dropped the escape ' left the value itself intact: it still verifies.
    assert verify_text(text.replace("\"'=cmd|", "\"=cmd|")).ok
    # A ' that belongs to the value is not taken for an escape: dropping it is an edit.
    _fails(text.replace("\"''=already", "\"'=already"), line_of(text, "'=cmd|"), "entry 4", "altered")
    _fails(text.replace("\"'=cmd|", "\"''=cmd|"), line_of(text, "'=cmd|"), "entry 4", "altered")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_deleted_line_fails_naming_the_line_after_it(trail, fmt):
    text = export(trail, fmt)
    lines = text.split("\n")
    n = line_of(text, jid(6))
    gone = "\n".join(lines[:n - 1] + lines[n:])
    msg = _fails(gone, n, "entry 7", "entry 6 is missing after entry 5", "--allow-gaps", fmt=fmt)
    assert "0 gaps" not in msg


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_reordered_line_fails_naming_it(trail, fmt):
    text = export(trail, fmt)
    lines = text.split("\n")
    a, b = line_of(text, jid(6)), line_of(text, jid(7))
    lines[a - 1], lines[b - 1] = lines[b - 1], lines[a - 1]
    swapped = "\n".join(lines)
    _fails(swapped, a, "entry 7", "missing", fmt=fmt)
    res = verify_text(swapped, fmt, allow_gaps=True)  # even when gaps are allowed, order is not optional
    assert not res.ok and res.where == f"line {b}" and "out of order" in res.reason


def test_a_recomputed_hash_breaks_the_next_link(trail):
    js = json.loads(export(trail, "json"))
    js[2]["detail"] = "nothing happened"
    js[2]["hash"] = entry_hash(js[2] | {"time": dt.datetime.fromisoformat(js[2]["time"])}, js[2]["prev_hash"])
    text = "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in js) + "\n]\n"
    _fails(text, 5, "entry 4", "prev_hash does not match entry 3")


def test_a_cut_tail_verifies_but_its_last_hash_differs_from_the_head(trail):
    text = export(trail, "csv")
    lines = text.split("\n")
    cut = "\n".join(lines[:line_of(text, jid(7)) - 1]) + "\n"
    res = verify_text(cut)
    assert res.ok and res.last_id == 6 and res.last_hash != verify_chain(trail.sessions).head_hash


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    assert not verify_text("a,b\n1,2\n").ok
    assert "header" in summary(verify_text("a,b\n1,2\n"))
    assert not verify_text("[1, 2]").ok
    assert not verify_text("{\"id\": 1}").ok
    p = tmp_path / "x.csv"
    p.write_text("not,an,export\n")
    res = _cli("verify", "--file", str(p), env=_bare_env())
    assert res.returncode != 0 and "line 1" in res.stderr
    res = _cli("verify", "--file", str(tmp_path / "missing.csv"), env=_bare_env())
    assert res.returncode == 1 and "cannot read" in res.stderr


# ---- filtered exports ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_filtered_export_verifies_each_entry_and_reports_its_gaps(trail, tmp_path, fmt):
    text = export(trail, fmt, environment="staging")  # ids 1, 2, 5, 7
    res = verify_text(text, allow_gaps=True)
    assert res.ok, summary(res)
    assert (res.entries, res.links, res.gaps) == (4, 1, [(2, 5), (5, 7)])
    assert "4 entries from the start of the chain to entry 7, 1 links checked, 2 gaps" in summary(res)
    strict = verify_text(text)
    assert not strict.ok and strict.bad_id == 5 and "--allow-gaps" in strict.reason
    path = tmp_path / f"staging.{fmt}"
    path.write_text(text, newline="")
    res = _cli("verify", "--file", str(path), "--allow-gaps", env=_bare_env())
    assert res.returncode == 0 and "2 gaps" in res.stdout
    # Across a gap each entry's own hash still holds.
    _fails(text.replace(jid(7), jid(8)), line_of(text, jid(7)), "entry 7", "altered", allow_gaps=True)


def test_a_filtered_export_starting_later_says_where_it_starts(trail):
    res = verify_text(export(trail, "json", environment="qa"), allow_gaps=True)
    assert res.ok and summary(res).startswith("export intact: 2 entries from entry 3 to entry 6, 0 links checked, 1 gaps")


# ---- reason in the chain ------------------------------------------------------------------------------
def _v1_hash(entry: dict[str, Any], prev: str) -> str:
    """The chain's hash as first written (before ``reason`` existed), frozen here."""
    data = {f: entry[f] for f in FIELDS}
    data["time"] = data["time"].astimezone(dt.timezone.utc).isoformat(timespec="microseconds")
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return hashlib.sha256(prev.encode() + b"\n" + body).hexdigest()


def test_entries_without_a_reason_hash_as_before_and_a_reason_is_covered():
    e = {"id": 1, "stream_id": "1-0", "time": dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc), "actor": "a",
         "source": "cli", "environment": "", "action": "grant.add", "target": "t", "outcome": "succeeded",
         "detail": "d", "job_id": "", "before": None, "after": None, "request_id": ""}
    assert entry_hash(e, GENESIS) == entry_hash(e | {"reason": ""}, GENESIS) == _v1_hash(e, GENESIS)
    assert entry_hash(e | {"reason": "because"}, GENESIS) != _v1_hash(e, GENESIS)
    assert b'"reason":"because"' in canonical(e | {"reason": "because"})


def test_rows_hashed_before_reason_existed_still_verify(rt):
    """A chain written by the first version (no reason in the hash) verifies after migration 0005."""
    prev, t0 = GENESIS, dt.datetime.now(dt.timezone.utc).replace(microsecond=123456)
    rows = []
    for i in range(1, 4):
        r = {"id": i, "stream_id": f"{i}-0", "time": t0 + dt.timedelta(seconds=i), "actor": "a@acme.test",
             "source": "cli", "environment": "staging", "action": "grant.add", "target": "b@acme.test",
             "outcome": "succeeded", "detail": "developer", "job_id": "", "before": None, "after": None,
             "request_id": ""}
        r["prev_hash"], r["hash"] = prev, _v1_hash(r, prev)
        prev = r["hash"]
        rows.append(r)
    with rt.sessions.begin() as s:
        s.execute(AuditEntry.__table__.insert(), rows)  # reason left to its server default
        s.execute(AuditEntry.__table__.update().where(AuditEntry.id == 1).values(reason=""))
    sql(rt, "UPDATE audit_head SET last_id = 3, hash = :h", h=prev)
    assert verify_chain(rt.sessions).ok
    rt.audit.record(event(9, reason="after the upgrade"))
    export_all(rt)
    assert verify_chain(rt.sessions).ok
    assert verify_text(export(rt, "csv")).ok and verify_text(export(rt, "json")).ok
    sql(rt, "UPDATE audit_entries SET reason = 'added later' WHERE id = 2")  # an old row given a reason
    res = verify_chain(rt.sessions)
    assert not res.ok and res.bad_id == 2


def test_the_reason_is_stored_and_an_edit_of_it_is_found(trail):
    with trail.sessions() as s:
        assert s.scalar(select(AuditEntry.reason).where(AuditEntry.id == 1)) == "staging down, Slack #ops"
    sql(trail, "UPDATE audit_entries SET reason = '' WHERE id = 1")
    res = verify_chain(trail.sessions)
    assert not res.ok and res.bad_id == 1 and "altered" in res.reason
