"""``valetkey web``: gunicorn embedded, after the configuration has been checked in the master."""
from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

from scope.catalog import load_catalog
from scope.errors import ConfigError
from scope.settings import Settings


class _App(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for k, v in self.options.items():
            self.cfg.set(k, v)

    def load(self) -> Any:
        # Each worker builds its own app (connections are not shared across fork).
        from web import create_app

        return create_app()


def check_config() -> Settings:
    """Fail in the master with one line, before gunicorn forks workers that would print tracebacks."""
    settings = Settings.from_env(os.environ)
    load_catalog(settings.environments_path, settings.environ, own_redis_url=settings.redis_url)
    if not settings.secret_key:
        raise ConfigError("environment", "VALETKEY_SECRET_KEY", "required: set a long random value")
    return settings


def serve(bind: str, workers: int = 2, threads: int = 16) -> None:
    check_config()
    # gthread: a long-polling client (job events, up to 25 s) holds one thread, not a process.
    _App({"bind": bind, "workers": workers, "threads": threads, "worker_class": "gthread",
          "timeout": 60, "graceful_timeout": 10, "keepalive": 5, "accesslog": "-",
          # A log-tail cursor plus a long, URL-encoded filter pattern outgrows the 4094-byte default.
          "limit_request_line": 8190,
          "errorlog": "-", "loglevel": "info"}).run()
