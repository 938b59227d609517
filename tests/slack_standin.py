"""A local stand-in for Slack's Web API (and for response_url and webhook receivers) on 127.0.0.1.

It answers ``users.info`` from a table of people, records ``chat.postMessage`` /
``chat.update`` calls, everything posted to ``/response/…`` (a command's or a
button's response_url) and to ``/hook/…`` (outbound webhooks), and can be told to
fail a hook's first N deliveries with 500.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class SlackStandIn:
    url: str = ""
    people: dict[str, dict[str, Any]] = field(default_factory=dict)  # user id -> users.info "user"
    calls: list[Recorded] = field(default_factory=list)
    fail_hooks: dict[str, int] = field(default_factory=dict)  # hook name -> deliveries still to fail
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ts: int = 0

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def response_url(self, name: str) -> str:
        return f"{self.url}/response/{name}"

    def hook_url(self, name: str) -> str:
        return f"{self.url}/hook/{name}"

    def person(self, user_id: str, email: str, **extra: Any) -> None:
        self.people[user_id] = {"id": user_id, "profile": {"email": email}, "deleted": False, **extra}

    def recorded(self, prefix: str) -> list[Recorded]:
        with self.lock:
            return [c for c in self.calls if c.path.startswith(prefix)]

    def wait_for(self, prefix: str, count: int = 1, timeout: float = 15.0,
                 where: Callable[[Recorded], bool] = lambda c: True) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while True:
            got = [c for c in self.recorded(prefix) if where(c)]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def answer(self, path: str, headers: dict[str, str], body: bytes, query: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.calls.append(Recorded(path, headers, body))
            if path.startswith("/hook/"):
                name = path.rsplit("/", 1)[1]
                if self.fail_hooks.get(name, 0) > 0:
                    self.fail_hooks[name] -= 1
                    return 500, {"error": "try later"}
                return 200, {}
            if path.startswith("/response/"):
                return 200, {}
            if path == "/api/users.info":
                fields = parse_qs(query) or parse_qs(body.decode())
                user = self.people.get((fields.get("user") or [""])[0])
                return 200, ({"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"})
            if path in ("/api/chat.postMessage", "/api/chat.update"):
                sent = json.loads(body or b"{}")
                if path.endswith("postMessage"):
                    self._ts += 1
                    ts = f"1700000000.{self._ts:06d}"
                else:
                    ts = sent["ts"]
                return 200, {"ok": True, "channel": "C0STAGING" if sent["channel"].startswith("#") else sent["channel"],
                             "ts": ts}
            return 404, {"ok": False, "error": "unknown_method"}


def start(standin: SlackStandIn) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parts = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, answer = standin.answer(parts.path, {k: v for k, v in self.headers.items()}, body, parts.query)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    standin.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
