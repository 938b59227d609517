"""``valetkey web``: gunicorn embedded, after the configuration has been checked in the master.

Each worker process runs uvicorn (an event loop) serving web/asgi.py's front: long-polls wait
on the loop and hold no thread, every other request runs in the Flask app on ``threads`` threads.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from scope.catalog import load_catalog
from scope.errors import ConfigError
from scope.settings import Settings


class _App(BaseApplication):
    def __init__(self, options: dict[str, Any], threads: int) -> None:
        self.options = options
        self.threads = threads
        super().__init__()

    def load_config(self) -> None:
        for k, v in self.options.items():
            self.cfg.set(k, v)

    def load(self) -> Any:
        # Each worker builds its own app (connections are not shared across fork).
        from web import create_app
        from web.asgi import Front

        return Front(create_app(), threads=self.threads)


class _DrainingServer(Server):
    """uvicorn's server, telling the front when it starts shutting down: a waiting long-poll then
    answers at once instead of holding the worker up to 25 s past SIGTERM (gunicorn's graceful
    timeout is 10 s)."""

    async def shutdown(self, sockets: Any = None) -> None:
        drain = getattr(self.config.app, "drain", None)
        if callable(drain):
            drain()
        await super().shutdown(sockets)


class Worker(UvicornWorker):
    """gunicorn worker running uvicorn with the C HTTP parser; gunicorn keeps its master, signals and logs."""

    CONFIG_KWARGS = {"loop": "asyncio", "http": "httptools", "lifespan": "on"}

    async def _serve(self) -> None:
        # UvicornWorker._serve, with the server that drains long-polls.
        self.config.app = self.wsgi
        server = _DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def check_config() -> Settings:
    """Fail in the master with one line, before gunicorn forks workers that would print tracebacks."""
    settings = Settings.from_env(os.environ)
    load_catalog(settings.environments_path, settings.environ, own_redis_url=settings.redis_url)
    if not settings.secret_key:
        raise ConfigError("environment", "VALETKEY_SECRET_KEY", "required: set a long random value")
    return settings


def serve(bind: str, workers: int = 2, threads: int = 16) -> None:
    check_config()
    _App({"bind": bind, "workers": workers, "worker_class": "valetkey.serve.Worker",
          "timeout": 60, "graceful_timeout": 10, "keepalive": 5, "accesslog": "-",
          "errorlog": "-", "loglevel": "info"}, threads).run()
