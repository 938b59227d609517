"""The ASGI front of the web tier: long-polls wait on the event loop, everything else is the Flask app.

Every request goes to the unchanged Flask (WSGI) app, run by a2wsgi in a pool of ``threads``
threads. A long-poll (``GET /api/v1/jobs/{id}/events?wait=``) runs the view too — auth, scope,
validation, the first read and the response headers are the view's own — in a small pool of its
own, but when the view finds nothing to return yet it defers (web/watch.py): its thread is given
back at once, the wait happens on the event loop, and the answer is made from the events that
end the wait (or by the view once more: a final event, a wait that ran out). So an open job page
holds no thread, and ``/healthz``, actions and pages keep their threads whatever the number of
watchers. ``Accept: text/event-stream`` gets the same data as Server-Sent Events.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import parse_qsl, urlencode

from a2wsgi import WSGIMiddleware
from flask import Flask

from jobs.events import MAX_WAIT
from web.watch import SCOPE_KEY, Entry, Slot, StreamHub

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The views that may defer. Anything else is passed through unbuffered (e.g. streamed exports).
DEFERRING = re.compile(r"^/api/v1/jobs/[^/]+/events$")


class Front:
    """ASGI app: ``Front(create_app(), threads=16)``."""

    def __init__(self, app: Flask, threads: int = 16) -> None:
        self.app = app
        self.wsgi = WSGIMiddleware(app, workers=threads)  # type: ignore[arg-type]
        # Long-polls' passes have threads of their own: however many watchers wake and re-poll at
        # once, they queue there, never in front of /healthz, an action or a page. Few, because
        # under one GIL more threads would only take CPU time from the main pool's requests.
        self.watch_wsgi = WSGIMiddleware(app, workers=max(2, threads // 8))  # type: ignore[arg-type]
        self._hub: StreamHub | None = None
        self._draining = False

    @property
    def hub(self) -> StreamHub:
        # Made on first use, inside the running event loop whose connections it will own.
        if self._hub is None:
            self._hub = StreamHub.from_url(self.app.extensions["valetkey"].settings.redis_url)
        return self._hub

    def drain(self) -> None:
        """Shutting down: waiting long-polls answer now with what there is; new ones do not wait."""
        self._draining = True
        if self._hub is not None:
            self._hub.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and DEFERRING.match(scope["path"]):
            if scope["method"] == "GET" and b"text/event-stream" in _request_header(scope, b"accept"):
                await self._event_stream(scope, receive, send)
            else:
                await self._long_poll(scope, receive, send)
        else:
            await self.wsgi(scope, receive, send)  # type: ignore[arg-type]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.drain()
                if self._hub is not None:
                    await self._hub.r.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _long_poll(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A GET's body means nothing to the view, which never reads one: it is not buffered here
        # (whatever a client sends is drained while waiting for its disconnect).
        slot = Slot(may_defer=not self._draining)
        first = await self._run_view({**scope, SCOPE_KEY: slot})
        ticket = slot.ticket
        if ticket is None:
            await _replay(first, send)
            return
        woken = await self._wait(ticket.key, ticket.after, ticket.wait, receive)
        if woken is None:
            return  # the client went away: nothing to answer, nothing kept
        page = ticket.answer(woken) if woken else None
        if page is not None:
            await _replay(self._with_body(first, page), send)
            return
        # The second pass answers under the first pass's request id (the one it logged and audited).
        headers = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        rid = _header(first, b"x-request-id")
        if rid:
            headers.append((b"x-request-id", rid))
        second = await self._run_view({**scope, "headers": headers, SCOPE_KEY: Slot(may_defer=False)})
        await _replay(second, send)

    async def _event_stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Server-Sent Events on the same data: each event as it comes (``id:`` its id, ``data:`` the
        event's JSON), then ``event: done`` once the job is done and the stream ends. ``Last-Event-ID``
        (a reconnecting EventSource) or ``after`` is where it starts. The view runs, as for a
        long-poll, at the start, for a final event, and at least every MAX_WAIT seconds (so a
        revoked session or token ends the stream within that); a refusal at the start is the view's
        own problem response, a refusal later ends the stream with ``event: error``."""
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        cursor = _request_header(scope, b"last-event-id").decode("latin-1") or query.get("after", "")

        async def view(after: str) -> tuple[list[Message], Slot]:
            slot = Slot(may_defer=False)
            qs = urlencode({"after": after}).encode() if after else b""
            return await self._run_view({**scope, "query_string": qs, SCOPE_KEY: slot}), slot

        first, slot = await view(cursor)
        start = next(m for m in first if m["type"] == "http.response.start")
        if start["status"] != 200 or slot.key is None or slot.answer is None:
            await _replay(first, send)
            return
        key, answer = slot.key, slot.answer
        headers = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-accel-buffering", b"no")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def emit(text: str, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": more})

        page: dict[str, Any] | None = json.loads(_body(first))
        checked = time.monotonic()
        while True:
            if page is not None:
                for e in page["events"]:
                    await emit(f"id: {e['id']}\ndata: {self.app.json.dumps(e)}\n\n")
                cursor = page["next"] or cursor
                if page.get("done"):
                    await emit(f"event: done\ndata: {self.app.json.dumps({'next': cursor})}\n\n", more=False)
                    return
            woken = await self._wait(key, cursor or "0-0", max(0.1, checked + MAX_WAIT - time.monotonic()), receive)
            if woken is None:
                return  # the client went away
            if self._draining:
                await emit("", more=False)  # EventSource reconnects (Last-Event-ID) to another worker
                return
            page = answer(woken) if woken and time.monotonic() - checked < MAX_WAIT else None
            if page is None:  # a final event, a quiet MAX_WAIT, or time to check the caller again
                again, _ = await view(cursor)
                if next(m for m in again if m["type"] == "http.response.start")["status"] != 200:
                    await emit(f"event: error\ndata: {_body(again).decode()}\n\n", more=False)
                    return
                page = json.loads(_body(again))
                checked = time.monotonic()
                if not page["events"] and not page["done"]:
                    await emit(": keep-alive\n\n")

    def _with_body(self, first: list[Message], page: dict[str, Any]) -> list[Message]:
        """The first pass's response (status, X-Request-ID, security headers, cookies) with ``page`` as
        its body, serialized by the app's own JSON provider, as the view's response would be."""
        resp: Any = self.app.json.response(page)  # a flask.Response (typed as its sans-IO base)
        data = resp.get_data()
        start = next(m for m in first if m["type"] == "http.response.start")
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
        return [{**start, "headers": headers}, {"type": "http.response.body", "body": data, "more_body": False}]

    async def _run_view(self, scope: Scope) -> list[Message]:
        """Run the Flask app for this request in the long-polls' threads; its whole (small) response."""
        out: list[Message] = []

        async def no_body() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def collect(message: Message) -> None:
            out.append(message)

        await self.watch_wsgi(scope, no_body, collect)  # type: ignore[arg-type]
        return out

    async def _wait(self, key: str, after: str, wait: float, receive: Receive) -> list[Entry] | None:
        """The entries newer than ``after`` once there are some, [] if ``wait`` ran out (or the hub closed),
        None if the client disconnected."""
        hub = self.hub
        moved: asyncio.Future[Any] = hub.watch(key, after)
        gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({moved, gone}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                return None
            return moved.result() if moved in done else []
        finally:
            hub.forget(key, moved)
            gone.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _replay(messages: list[Message], send: Send) -> None:
    for message in messages:
        await send(message)


def _body(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def _request_header(scope: Scope, name: bytes) -> bytes:
    return b",".join(v for k, v in scope["headers"] if k.lower() == name)


def _header(messages: list[Message], name: bytes) -> bytes | None:
    for message in messages:
        if message["type"] == "http.response.start":
            for k, v in message.get("headers", []):
                if k.lower() == name:
                    return bytes(v)
    return None
