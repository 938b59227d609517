"""The app builds and serves its probes (a quick check that fixtures and wiring hold)."""


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_checks_redis_and_database(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json["checks"] == {"redis": "ok", "database": "ok"}
