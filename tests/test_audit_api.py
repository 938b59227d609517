"""GET /api/v1/audit, the CSV/JSON exports, the audit page and an environment's history.

Entries reach the database the real way: AuditLog -> Redis stream -> Exporter.
Every test runs on SQLite and PostgreSQL, whose CSV paths differ (batched
joins vs COPY): both are held to the reference writer.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from audit.chain import PURGE_ACTION
from audit.export import CSV_COLUMNS, _sqlite_csv, csv_row, write_csv, write_export
from audit.queries import AuditFilter, iterate
from audit.retention import purge
from tests.conftest import PASSWORD, seed_cluster
from tests.test_audit_exporter import ago, event, export_all


@pytest.fixture
def users(make_user) -> dict[str, dict[str, str]]:
    return {
        "dev": make_user("dev@acme.test", ("staging", "developer")),
        "qa": make_user("qa@acme.test", ("qa", "viewer")),
        "nobody": make_user("nobody@acme.test"),
        "auditor": make_user("audrey@acme.test", ("*", "auditor")),
        "admin": make_user("adam@acme.test", ("*", "admin")),
    }


@pytest.fixture
def auditor(make_user) -> dict[str, str]:
    return make_user("audrey@acme.test", ("*", "auditor"))


@pytest.fixture
def trail(rt) -> Any:
    """A small trail: staging actions, a qa action, logins (no environment), and some hostile text."""
    rt.audit.record(event(1, time=ago(3), outcome="requested"))
    rt.audit.record(event(2, time=ago(2.9), outcome="succeeded", detail="HEALTHY after 38s",
                          before={"image": "sha:a1"}, after={"image": "sha:b2"}))
    rt.audit.record(event(3, environment="qa", target="search-api", actor="qa@acme.test", time=ago(1.9)))
    rt.audit.record(event(4, action="login", environment="", target="", job_id="", actor="dev@acme.test",
                          source="web", outcome="succeeded", detail="local password", time=ago(1)))
    rt.audit.record(event(5, action="redis.flush", outcome="denied", actor="=HYPERLINK(\"http://x\")",
                          target="+cache", detail='-2+3, "quoted"\nsecond line', time=ago(0.5)))
    rt.audit.record(event(6, action="task.run", outcome="failed", target="@SUM(A1)", detail="\tTAB start",
                          time=ago(0.1)))
    rt.audit.record(event(7, action="logs.view", outcome="succeeded", detail="\rCR start", time=ago(0.05)))
    export_all(rt)
    return rt


def get(client: Any, path: str, who: dict[str, str] | None, **params: Any) -> Any:
    return client.get(path, headers=who or {}, query_string=params)


def problem(resp: Any, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    return resp.get_json()


def details(resp: Any) -> list[str]:
    return [e["detail"] for e in resp.get_json()["entries"]]


# ---- the list -----------------------------------------------------------------------------
def test_list_is_newest_first_with_every_contract_field(client, users, trail):
    body = get(client, "/api/v1/audit", users["auditor"]).get_json()
    entries = body["entries"]
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert len(entries) == 7 and body["cursor"] is None
    e = next(x for x in entries if x["detail"] == "HEALTHY after 38s")
    assert set(CSV_COLUMNS) <= set(e)
    assert {"before", "after", "request_id", "prev_hash", "hash"} <= set(e)
    assert e["before"] == {"image": "sha:a1"} and e["after"] == {"image": "sha:b2"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["time"])
    assert e["source"] == "api" and e["outcome"] == "succeeded" and len(e["hash"]) == 64


FILTER_CASES = [
    ({"environment": "qa"}, ["event 3"]),
    ({"actor": "qa@acme.test"}, ["event 3"]),
    ({"actor": "QA@acme.test"}, ["event 3"]),  # e-mails are compared lowercased
    ({"action": "login"}, ["local password"]),
    ({"outcome": "failed"}, ["\tTAB start"]),
    ({"environment": "staging", "outcome": "succeeded"}, ["\rCR start", "HEALTHY after 38s"]),
    ({"since": "3h"}, ["\rCR start", "\tTAB start"]),
    ({"until": "2d"}, ["HEALTHY after 38s", "event 1"]),
    ({"since": "4d", "until": "60h"}, ["HEALTHY after 38s", "event 1"]),
    ({"environment": "nowhere"}, []),
]


def test_filters(client, auditor, trail):
    for params, expected in FILTER_CASES:
        assert details(get(client, "/api/v1/audit", auditor, **params)) == expected, params


def test_iso_time_filters(client, users, trail):
    rows = get(client, "/api/v1/audit", users["auditor"]).get_json()["entries"]
    t3 = next(e["time"] for e in rows if e["detail"] == "event 3")
    exact = get(client, "/api/v1/audit", users["auditor"], since=t3).get_json()["entries"]
    assert exact[-1]["detail"] == "event 3"  # since is inclusive
    assert "event 3" not in details(get(client, "/api/v1/audit", users["auditor"], until=t3))  # until is not
    day = t3[:10]
    assert get(client, "/api/v1/audit", users["auditor"], since=day).status_code == 200


def test_pagination_is_stable_while_rows_are_appended(client, rt, users, trail):
    seen: list[int] = []
    body = get(client, "/api/v1/audit", users["auditor"], limit=3).get_json()
    seen += [e["id"] for e in body["entries"]]
    while body["cursor"]:
        rt.audit.record(event(100 + len(seen)))  # new rows land on top, never inside the walk
        export_all(rt)
        body = get(client, "/api/v1/audit", users["auditor"], limit=3, cursor=body["cursor"]).get_json()
        seen += [e["id"] for e in body["entries"]]
    assert seen == list(range(7, 0, -1))  # each of the original seven once, in order


def test_pagination_with_filters_and_exact_page_ends(client, users, trail):
    first = get(client, "/api/v1/audit", users["auditor"], environment="staging", limit=2).get_json()
    assert len(first["entries"]) == 2 and first["cursor"]
    rest = get(client, "/api/v1/audit", users["auditor"], environment="staging", limit=10,
               cursor=first["cursor"]).get_json()
    assert rest["cursor"] is None
    assert all(e["environment"] == "staging" for e in first["entries"] + rest["entries"])
    assert len(first["entries"] + rest["entries"]) == 5
    exact = get(client, "/api/v1/audit", users["auditor"], environment="staging", limit=5).get_json()
    assert len(exact["entries"]) == 5 and exact["cursor"] is None


BAD_FILTERS = [
    ({"since": "last tuesday"}, "since"),
    ({"until": "2026-13-45"}, "until"),
    ({"since": "99999999999d"}, "since"),
    ({"since": "2026-11-25", "until": "2026-11-24"}, "until"),
    ({"action": "service.explode"}, "action"),
    ({"outcome": "maybe"}, "outcome"),
    ({"actor": "x" * 400}, "actor"),
    ({"colour": "blue"}, "colour"),
]


def test_bad_filters_are_400_naming_the_field(client, auditor):
    for path in ("/api/v1/audit", "/api/v1/audit/export.csv", "/api/v1/audit/export.json"):
        for params, field in BAD_FILTERS:
            body = problem(get(client, path, auditor, **params))
            assert field in body["detail"] and field in body["errors"], (path, params, body)


def test_bad_limit_or_cursor_is_400_naming_it(client, auditor):
    for params, field in [({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
                          ({"cursor": "not-a-cursor"}, "cursor"),
                          ({"cursor": "djI6NQ"}, "cursor"),  # "v2:5": not this version's
                          ({"cursor": "djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "cursor")]:  # beyond any id
        assert field in problem(get(client, "/api/v1/audit", auditor, **params))["detail"], params


def test_the_purge_action_is_a_valid_filter(client, rt, users, trail):
    rt.audit.record(event(50, time=ago(200)))  # an old entry after newer ones: not a purgeable prefix
    export_all(rt)
    purge(rt.sessions, days=2)  # entries 1-2 are older than two days
    rows = get(client, "/api/v1/audit", users["auditor"], action=PURGE_ACTION).get_json()["entries"]
    assert len(rows) == 1 and rows[0]["environment"] == "" and "2 entries" in rows[0]["detail"]
    assert get(client, "/api/v1/audit", users["dev"], action=PURGE_ACTION).get_json()["entries"] == []


# ---- who sees what --------------------------------------------------------------------------
def test_unauthenticated_is_401(client, trail):
    for path in ("/api/v1/audit", "/api/v1/audit/export.csv", "/api/v1/audit/export.json"):
        problem(client.get(path), 401)


def test_developer_sees_only_own_environments_and_no_environmentless_entries(client, users, trail):
    entries = get(client, "/api/v1/audit", users["dev"]).get_json()["entries"]
    assert entries and {e["environment"] for e in entries} == {"staging"}
    assert "login" not in {e["action"] for e in entries}
    assert get(client, "/api/v1/audit", users["dev"], environment="qa").get_json()["entries"] == []
    assert get(client, "/api/v1/audit", users["dev"], action="login").get_json()["entries"] == []
    exported = get(client, "/api/v1/audit/export.json", users["dev"]).get_json()
    assert {e["environment"] for e in exported} == {"staging"}
    lines = list(csv.reader(io.StringIO(get(client, "/api/v1/audit/export.csv", users["dev"]).get_data(as_text=True))))
    assert {r[4] for r in lines[1:]} == {"staging"}


def test_viewer_of_another_environment_sees_only_that_one(client, users, trail):
    entries = get(client, "/api/v1/audit", users["qa"]).get_json()["entries"]
    assert [e["detail"] for e in entries] == ["event 3"]


def test_user_without_grants_sees_nothing(client, users, trail):
    assert get(client, "/api/v1/audit", users["nobody"]).get_json() == {"entries": [], "cursor": None}
    assert get(client, "/api/v1/audit/export.json", users["nobody"]).get_json() == []
    assert get(client, "/api/v1/audit/export.csv", users["nobody"]).get_data(as_text=True) == \
        ",".join(CSV_COLUMNS) + "\n"


@pytest.mark.parametrize("who", ["auditor", "admin"])
def test_auditors_and_admins_see_everything(client, users, trail, who):
    entries = get(client, "/api/v1/audit", users[who]).get_json()["entries"]
    assert {e["environment"] for e in entries} == {"staging", "qa", ""}


# ---- exports -------------------------------------------------------------------------------
def test_csv_export_headers_filename_and_formula_guard(client, users, trail):
    r = get(client, "/api/v1/audit/export.csv", users["auditor"])
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert r.headers["Content-Disposition"] == 'attachment; filename="valetkey-audit_all.csv"'
    text = r.get_data(as_text=True)
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    rows = list(csv.reader(io.StringIO(text)))[1:]
    assert [int(x[0]) for x in rows] == list(range(1, 8))  # oldest first
    by_job = {x[9]: dict(zip(CSV_COLUMNS, x)) for x in rows}
    hostile = by_job[f"{5:032x}"]
    assert hostile["actor"] == "'=HYPERLINK(\"http://x\")"
    assert hostile["target"] == "'+cache"
    assert hostile["detail"] == "'-2+3, \"quoted\"\nsecond line"
    assert by_job[f"{6:032x}"]["target"] == "'@SUM(A1)" and by_job[f"{6:032x}"]["detail"] == "'\tTAB start"
    assert by_job[f"{7:032x}"]["detail"] == "'\rCR start"
    assert by_job[f"{2:032x}"]["detail"] == "HEALTHY after 38s"  # untouched
    # No cell of the download starts a formula.
    assert not [c for x in rows for c in x if c[:1] in ("=", "+", "-", "@", "\t", "\r")]


def test_csv_and_json_exports_agree_with_each_other_and_the_list(client, users, trail):
    text = get(client, "/api/v1/audit/export.csv", users["auditor"]).get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text)))[1:]
    js = get(client, "/api/v1/audit/export.json", users["auditor"]).get_json()
    assert [int(x[0]) for x in rows] == [e["id"] for e in js]
    assert [x[1] for x in rows] == [e["time"] for e in js]  # the same ISO text in both
    listed = get(client, "/api/v1/audit", users["auditor"]).get_json()["entries"]
    assert list(reversed(listed)) == js


def test_export_filename_names_the_filters(client, auditor, trail):
    for params, name in [
        ({}, "valetkey-audit_all.json"),
        ({"environment": "staging"}, "valetkey-audit_environment-staging.json"),
        ({"actor": "dev@acme.test", "action": "service.restart", "outcome": "denied"},
         "valetkey-audit_actor-dev-acme.test_action-service.restart_outcome-denied.json"),
        ({"since": "2026-11-24T18:00:00Z", "until": "2026-11-25"},
         "valetkey-audit_since-20261124T180000Z_until-20261125T000000Z.json"),
        ({"environment": 'a"b;c\r\nX-Evil: 1'}, "valetkey-audit_environment-a-b-c-X-Evil-1.json"),
    ]:
        r = get(client, "/api/v1/audit/export.json", auditor, **params)
        assert r.headers["Content-Disposition"] == f'attachment; filename="{name}"'
        assert r.get_json() is not None  # read the stream to its end


def test_json_export_applies_the_filters(client, users, trail):
    js = get(client, "/api/v1/audit/export.json", users["auditor"], environment="staging", outcome="succeeded").get_json()
    assert [e["detail"] for e in js] == ["HEALTHY after 38s", "\rCR start"]
    assert js[0]["before"] == {"image": "sha:a1"} and js[0]["prev_hash"] and js[0]["hash"]


TRICKY = ["plain", "comma, inside", 'quote " inside', "new\nline", "cr\ronly", "crlf\r\nend", "=1+1", "+1", "-1",
          "@me", "\tTab", "\rCR", "ünïcødé ✓ — dash", "", " leading space", "trailing space ", "a\x1fb", "x\x1ey",
          "'already quoted", '"', ",", "\\.", "=", "-"]


def test_fast_csv_paths_match_the_reference_writer(rt):
    """Both databases' fast paths (COPY / batched joins) against the plain csv-module writer, on every
    kind of awkward value, across batch boundaries."""
    for i, value in enumerate(TRICKY * 3):
        rt.audit.record(event(i, detail=value, actor=value or "x", target=TRICKY[(i + 3) % len(TRICKY)],
                              environment=["staging", "qa", ""][i % 3]))
    export_all(rt)
    for envs in (None, ["staging"], []):
        flt = AuditFilter()
        expected = "".join(write_csv(csv_row(r) for r in iterate(rt.sessions, flt, envs)))
        got = b"".join(write_export(rt.sessions, flt, "csv", envs)).decode()
        assert got == expected  # byte for byte, on either database
        assert list(csv.reader(io.StringIO(got)))[0] == list(CSV_COLUMNS)
        if rt.engine.dialect.name == "sqlite":
            assert b"".join(_sqlite_csv(rt.sessions, flt, envs, batch=4)).decode() == expected


def test_export_streams_many_rows_in_order(rt):
    for i in range(2500):
        rt.audit.record(event(i, detail=f"row {i}" + (", with comma" if i % 97 == 0 else "")))
    export_all(rt)
    got = b"".join(write_export(rt.sessions, AuditFilter(), "csv")).decode()
    rows = list(csv.reader(io.StringIO(got)))[1:]
    assert [int(r[0]) for r in rows] == list(range(1, 2501))
    js = json.loads(b"".join(write_export(rt.sessions, AuditFilter(), "json")).decode())
    assert [e["id"] for e in js] == list(range(1, 2501))


def test_export_command_writes_to_stdout(rt, trail, environ, capsysbinary, monkeypatch):
    from valetkey.cli import main

    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    assert main(["audit", "export", "--format", "csv", "--environment", "qa"]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert out.splitlines()[0] == ",".join(CSV_COLUMNS) and "event 3" in out and "event 1" not in out
    assert main(["audit", "export", "--since", "whenever"]) == 1


# ---- the pages ------------------------------------------------------------------------------
def login(client: Any, email: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/"})
    assert r.status_code == 302


def test_audit_page_filters_table_and_download_links(client, users, trail):
    login(client, "audrey@acme.test")
    html = client.get("/audit?environment=staging&outcome=succeeded").get_data(as_text=True)
    for field in ("environment", "actor", "action", "outcome", "since", "until"):
        assert f'<label for="audit-{field}">' in html and f'id="audit-{field}"' in html
    assert "HEALTHY after 38s" in html and "event 3" not in html
    assert re.search(r'<time datetime="\d{4}-[^"]+Z" title="[^"]+ UTC">', html)
    links = re.findall(r'href="(/api/v1/audit/export\.(?:csv|json)\?[^"]*)"[^>]*>Download (CSV|JSON)', html)
    assert {kind for _, kind in links} == {"CSV", "JSON"}
    for href, _ in links:
        q = parse_qs(urlsplit(href.replace("&amp;", "&")).query)
        assert q == {"environment": ["staging"], "outcome": ["succeeded"]}
    assert 'value="staging" selected' in html and 'value="succeeded" selected' in html
    assert f'value="{PURGE_ACTION}"' in html


def test_audit_page_shows_bad_filters_as_errors(client, users, trail):
    login(client, "audrey@acme.test")
    r = client.get("/audit?since=someday")
    html = r.get_data(as_text=True)
    assert r.status_code == 400 and 'id="audit-since-error"' in html and "not a date or time" in html
    assert "Download CSV" not in html


def test_audit_page_is_scoped_and_pages(client, rt, users, trail):
    login(client, "dev@acme.test")
    html = client.get("/audit").get_data(as_text=True)
    assert ">event 1 <a" in html and "event 3" not in html and "local password" not in html
    assert '<option value="qa"' not in html  # environments one has no role in are not offered
    for i in range(60):
        rt.audit.record(event(200 + i))
    export_all(rt)
    html = client.get("/audit").get_data(as_text=True)
    older = re.search(r'href="(/audit\?cursor=[^"]+)"[^>]*>Older entries', html)
    assert older and ">event 1 <a" not in html
    assert ">event 1 <a" in client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)


def test_audit_page_requires_sign_in(client):
    r = client.get("/audit")
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_environment_page_shows_its_recent_history(client, rt, users, trail, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    login(client, "dev@acme.test")
    html = client.get("/environments/staging").get_data(as_text=True)
    history = html[html.index('id="history-heading"'):]
    assert "HEALTHY after 38s" in history and "event 3" not in history and "local password" not in history
    assert "/audit?environment=staging" in history
    assert 'href="/audit"' in html  # the nav link


def test_history_is_limited_to_the_newest_entries(client, rt, users, trail, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    for i in range(30):
        rt.audit.record(event(300 + i))
    export_all(rt)
    login(client, "dev@acme.test")
    html = client.get("/environments/staging").get_data(as_text=True)
    history = html[html.index('id="history-heading"'):]
    assert history.count("<li>") == 20
    assert "event 329" in history and "event 309" not in history


def test_export_times_are_utc(client, users, trail):
    js = get(client, "/api/v1/audit/export.json", users["auditor"]).get_json()
    for e in js:
        t = dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
        assert t.utcoffset() == dt.timedelta(0)


def test_filter_values_are_data_not_sql(client, rt, auditor):
    rt.audit.record(event(1, actor="o'brien%_\\x@acme.test"))
    rt.audit.record(event(2))
    export_all(rt)
    for path in ("/api/v1/audit/export.csv", "/api/v1/audit/export.json", "/api/v1/audit"):
        body = get(client, path, auditor, actor="o'brien%_\\x@acme.test").get_data(as_text=True)
        assert "event 1" in body and "event 2" not in body
        body = get(client, path, auditor, environment="staging' OR '1'='1").get_data(as_text=True)
        assert "event" not in body


def test_an_abandoned_download_frees_its_connection(rt):
    """A client that hangs up mid-download: the generator is closed, the connection goes back clean."""
    for i in range(3000):
        rt.audit.record(event(i, detail=f"row {i:05d} " + "x" * 100))
    export_all(rt)
    for _ in range(rt.engine.pool.size() + 2 if hasattr(rt.engine.pool, "size") else 3):
        stream = write_export(rt.sessions, AuditFilter(), "csv")
        assert next(stream).startswith(b"id,time")
        stream.close()
    got = b"".join(write_export(rt.sessions, AuditFilter(), "csv")).decode()
    assert len(list(csv.reader(io.StringIO(got)))) == 3001
