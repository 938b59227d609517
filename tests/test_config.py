"""A bad environments.toml stops start-up with one line naming file, key and reason (exit 2)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scope.catalog import load_catalog
from scope.errors import ConfigError
from scope.settings import Settings

GOOD = """
[environments.staging]
cluster = "stg"
region = "eu-central-1"
run_tasks = ["migrate"]
schedule = { timezone = "Europe/Berlin", up = ["Mon-Fri 07:00-20:00", "Sat 10:00-12:00"] }

[environments.staging.redis.cache]
url_env = "CACHE_URL"
max_keys = 50

[environments.staging.github]
repository = "acme/orders-api"
ref = "refs/heads/main"

[environments.prod]
class = "prod"
cluster = "prod"
"""


def write(tmp_path: Path, body: str) -> str:
    p = tmp_path / "environments.toml"
    p.write_text(body)
    return str(p)


def test_good_catalog_loads(tmp_path):
    cat = load_catalog(write(tmp_path, GOOD), {"CACHE_URL": "redis://cache.internal:6379/2"})
    staging, prod = cat.get("staging"), cat.get("prod")
    assert staging.enabled and staging.region == "eu-central-1" and staging.run_tasks == ("migrate",)
    assert staging.redis["cache"].max_keys == 50 and staging.github["repository"] == "acme/orders-api"
    assert staging.schedule.timezone == "Europe/Berlin" and len(staging.schedule.windows) == 2
    # Production is off unless explicitly enabled.
    assert prod.is_prod and not prod.enabled and not prod.actions_allowed


def test_prod_can_be_enabled_explicitly(tmp_path):
    cat = load_catalog(write(tmp_path, '[environments.prod]\nclass = "prod"\ncluster = "p"\nenabled = true\n'), {})
    assert cat.get("prod").actions_allowed


@pytest.mark.parametrize("body, key, reason", [
    ("[environments.x]\nclass = \"qa\"\ncluster = \"c\"\n", "environments.x.class", "unknown class"),
    ("[environments.x]\nregion = \"us-east-1\"\n", "environments.x.cluster", "missing required key"),
    ("[environments.x]\ncluster = \"c\"\nclustr = \"d\"\n", "environments.x.clustr", "unknown key"),
    ("[environments.x]\ncluster = \"c\"\n[environments.x.redis.cache]\nurl_env = \"NOPE_UNSET\"\n",
     "environments.x.redis.cache.url_env", "NOPE_UNSET is not set"),
    ("[environments.x]\ncluster = \"c\"\nrole_arn = \"arn:aws:iam::1:role/r\"\n",
     "environments.x.external_id", "required with role_arn"),
    ("[environments.x]\ncluster = \"c\"\nschedule = { timezone = \"Mars/Base\", up = \"Mon 07:00-08:00\" }\n",
     "environments.x.schedule", "unknown time zone"),
    ("[environments.x]\ncluster = \"c\"\nschedule = { up = \"Funday 07:00-08:00\" }\n",
     "environments.x.schedule", "unknown day"),
    ("[environments.x]\ncluster = \"c\"\nschedule = { up = \"Mon 07:00-25:00\" }\n",
     "environments.x.schedule", "bad time"),
    ("[environments.x]\ncluster = \"c\"\nrun_tasks = \"migrate\"\n", "environments.x.run_tasks", "list"),
    ("[environments.x]\ncluster = \"c\"\n[environments.x.github]\nbranch = \"main\"\n",
     "environments.x.github.branch", "unknown key"),
    ("[environments.x]\ncluster = \"c\"\n[environments.x.github]\nref = \"refs/heads/main\"\n",
     "environments.x.github", "neither repository nor repository_owner_id"),
    ("[envs.x]\ncluster = \"c\"\n", "envs", "unknown key"),
])
def test_bad_catalog_names_key_and_reason(tmp_path, body, key, reason):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_catalog(path, {})
    assert e.value.file == path and e.value.key == key and reason in e.value.reason


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_catalog(str(tmp_path / "nope.toml"), {})
    assert "file not found" in e.value.reason


def test_bad_toml(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_catalog(write(tmp_path, "[environments.x\ncluster = "), {})
    assert "invalid TOML" in e.value.reason


def test_target_pointing_at_our_own_redis_is_refused(tmp_path):
    body = "[environments.x]\ncluster = \"c\"\n[environments.x.redis.c]\nurl_env = \"C\"\n"
    with pytest.raises(ConfigError) as e:
        load_catalog(write(tmp_path, body), {"C": "redis://localhost:6379/0"}, own_redis_url="redis://127.0.0.1:6379")
    assert "own Redis" in e.value.reason
    # Another database of the same server is a different target.
    load_catalog(write(tmp_path, body), {"C": "redis://localhost:6379/1"}, own_redis_url="redis://127.0.0.1:6379/0")


def test_bad_setting_names_variable():
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"VALETKEY_AUDIT_RETENTION_DAYS": "ninety"})
    assert e.value.key == "VALETKEY_AUDIT_RETENTION_DAYS"
    with pytest.raises(ConfigError):
        Settings.from_env({"VALETKEY_LOCAL_LOGIN": "maybe"})


@pytest.mark.parametrize("command", [["web", "--bind", "127.0.0.1:0"], ["worker"], ["audit", "consume"],
                                     ["schedule", "run"], ["grant", "a@b.test", "x", "viewer"]])
def test_processes_stop_with_one_line_and_exit_2(tmp_path, command):
    path = write(tmp_path, "[environments.x]\nclass = \"preprod\"\ncluster = \"c\"\n")
    env = {"PATH": "/usr/bin:/bin", "VALETKEY_ENVIRONMENTS": path, "VALETKEY_SECRET_KEY": "k",
           "VALETKEY_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    r = subprocess.run([sys.executable, "-m", "valetkey.cli", *command], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [f"valetkey: configuration error: {path}: environments.x.class: "
                     "unknown class 'preprod' (expected 'staging' or 'prod')"]
    assert "Traceback" not in r.stderr + r.stdout


def test_web_refuses_to_start_without_secret_key(tmp_path):
    path = write(tmp_path, "[environments.x]\ncluster = \"c\"\n")
    r = subprocess.run([sys.executable, "-m", "valetkey.cli", "web", "--bind", "127.0.0.1:0"],
                       env={"PATH": "/usr/bin:/bin", "VALETKEY_ENVIRONMENTS": path}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "VALETKEY_SECRET_KEY" in r.stderr and "Traceback" not in r.stderr


def test_github_rule_without_repository_pin_stops_the_cli_with_exit_2(tmp_path):
    path = write(tmp_path, "[environments.x]\ncluster = \"c\"\n[environments.x.github]\nref = \"refs/heads/main\"\n")
    env = {"PATH": "/usr/bin:/bin", "VALETKEY_ENVIRONMENTS": path, "VALETKEY_SECRET_KEY": "k",
           "VALETKEY_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    r = subprocess.run([sys.executable, "-m", "valetkey.cli", "iam-policy", "--offline"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"valetkey: configuration error: {path}: environments.x.github: names neither "
                                "repository nor repository_owner_id: any repository on GitHub could match it")


def test_a_postgresql_pool_holds_at_least_a_web_process_threads(monkeypatch):
    from scope.db import make_engine

    engine = make_engine("postgresql://postgres@127.0.0.1:5432/test")
    try:  # 16 request threads, the long-poll hub and /metrics may each hold one at once
        assert engine.pool.size() + engine.pool._max_overflow >= 18  # type: ignore[attr-defined]
    finally:
        engine.dispose()
    monkeypatch.setenv("VALETKEY_DB_MAX_OVERFLOW", "2")
    engine = make_engine("postgresql://postgres@127.0.0.1:5432/test")
    try:
        assert engine.pool._max_overflow == 2  # type: ignore[attr-defined]
    finally:
        engine.dispose()
