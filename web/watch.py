"""Waiting for new events on Redis streams without a thread: the async side of long-polls.

A long-poll runs the Flask view in the ASGI front's thread pool (web/asgi.py) with only the
wait on the event loop:

1. the view authenticates, authorizes and reads what is already there; when there is nothing
   to return yet it *defers* (``Slot.defer``) instead of blocking its thread;
2. the front waits on the process's ``StreamHub`` until the stream moves, the wait runs out or
   the client goes away (then nothing more is done). New entries are turned into the body by the
   ticket's ``answer`` and sent with the first pass's status and headers; when ``answer`` cannot
   decide alone (it returns None), or the wait ran out, the view runs once more without waiting.

``StreamHub`` keeps ONE blocking XREAD per process for all watched streams, each at the oldest
cursor among its waiters, and fans what it sees out to them: a thousand watchers of one job
cost one Redis read, not a thousand. A private "nudge" stream in the same XREAD wakes the read
when a stream joins, so a new waiter is included at once rather than after the block runs out.
Waiting by cursor (never ``$``) means an event appended between the view's read and the
waiter's registration still wakes it.

The stream is any Redis stream with ``ms-seq`` ids, so the environment page's live state and
the log follow can wait the same way (a view defers on its own stream key).
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import redis.asyncio as aioredis
import redis.exceptions
from flask import request

log = logging.getLogger(__name__)

# Where the front puts the Slot: the ASGI scope, which a2wsgi hands to Flask as environ["asgi.scope"];
# a client cannot put anything there (unlike a header).
SCOPE_KEY = "valetkey.watch"
BLOCK_MS = 10_000  # one XREAD blocks at most this long; the socket timeout is longer
BATCH = 500  # entries per stream and read, as JobEvents.read
NUDGE_KEEP_SECONDS = 60


Entry = tuple[Any, dict[Any, Any]]  # a raw stream entry: (id, fields)
# Turns the entries that woke a deferred request into its JSON body; None: run the view again instead.
Answer = Callable[[list[Entry]], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Ticket:
    """What a deferring view asks the front to wait for: entries newer than ``after`` on ``key``."""
    key: str
    after: str
    wait: float
    answer: Answer


class Slot:
    """One request's handshake between the front and the view."""

    def __init__(self, may_defer: bool) -> None:
        self.may_defer = may_defer
        self.ticket: Ticket | None = None
        self.key: str | None = None  # the stream the view read (what an event stream then follows)
        self.answer: Answer | None = None

    def defer(self, key: str, after: str, wait: float, answer: Answer) -> bool:
        """Ask the front to wait instead of this thread; False when it will not (second pass, draining).

        When entries arrive, ``answer`` (run on the event loop: cheap, no I/O) makes the response body
        from them with the first pass's status and headers; when it returns None, or the wait runs
        out, the view runs again without waiting and answers itself. A view calls this whenever it
        reads (with ``wait`` 0 when it has something to return): the key and ``answer`` also serve
        an event stream following the same data."""
        self.key, self.answer = key, answer
        if not self.may_defer or wait <= 0:
            return False
        self.ticket = Ticket(key, after, wait, answer)
        return True


def current_slot() -> Slot | None:
    """This request's slot, when it came through the ASGI front; None under a plain WSGI server."""
    scope = request.environ.get("asgi.scope")
    slot = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    return slot if isinstance(slot, Slot) else None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _sid(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class StreamHub:
    """Per-process fan-out of new stream entries to waiting requests (one event loop)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client
        self._waiters: dict[str, dict[asyncio.Future[list[Entry]], tuple[int, int]]] = {}
        self._reading: dict[str, tuple[int, int]] = {}  # the cursors of the XREAD in flight
        self._nudge_key = f"valetkey:watch:{uuid.uuid4().hex}:nudge"
        self._nudge_seen = "0-0"
        self._nudged = False
        self._nudges: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> StreamHub:
        return cls(aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=BLOCK_MS / 1000 + 10))

    def watch(self, key: str, after: str) -> asyncio.Future[list[Entry]]:
        """A future of the entries of ``key`` newer than ``after``, once there are some (an empty list
        when the hub closes). Call ``forget`` after."""
        fut: asyncio.Future[list[Entry]] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_result([])
            return fut
        cursor = _sid(after)
        self._waiters.setdefault(key, {})[fut] = cursor
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="stream-hub")
        elif key not in self._reading or cursor < self._reading[key]:
            self._nudge()
        return fut

    def forget(self, key: str, fut: asyncio.Future[list[Entry]]) -> None:
        """Drop a waiter (answered, timed out or its client gone); its stream leaves the next read."""
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.pop(fut, None)
            if not waiters:
                del self._waiters[key]
        if not fut.done():
            fut.cancel()

    def close(self) -> None:
        """Answer every waiter now (shutting down: they reply with what there is) and stop reading."""
        self._closed = True
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result([])
        self._waiters.clear()
        if self._task is not None:
            self._task.cancel()

    @property
    def watched(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def _nudge(self) -> None:
        if self._nudged:
            return
        self._nudged = True
        task = asyncio.create_task(self._send_nudge())
        self._nudges.add(task)  # held until done: the loop keeps only a weak reference to tasks
        task.add_done_callback(self._nudges.discard)

    async def _send_nudge(self) -> None:
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.xadd(self._nudge_key, {"n": "1"}, maxlen=10, approximate=True)
                pipe.expire(self._nudge_key, NUDGE_KEEP_SECONDS)
                await pipe.execute()
        except redis.exceptions.RedisError as e:
            # The read in flight still ends within BLOCK_MS and then includes the new stream.
            log.warning("stream hub: nudge failed: %s", e)

    async def _run(self) -> None:
        while self._waiters and not self._closed:
            # No await between clearing the flag and taking the cursors: a waiter added after this
            # point nudges the read below, one added before it is in it.
            self._nudged = False
            self._reading = {k: min(w.values()) for k, w in self._waiters.items()}
            streams: dict[Any, Any] = {k: f"{c[0]}-{c[1]}" for k, c in self._reading.items()}
            streams[self._nudge_key] = self._nudge_seen
            try:
                got: Any = await self.r.xread(streams, count=BATCH, block=BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as e:
                # Waiters time out as usual and their second pass reports the outage (503).
                log.warning("stream hub: read failed: %s", e)
                await asyncio.sleep(1.0)
                continue
            for raw_key, entries in got or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                if not entries:
                    continue
                if key == self._nudge_key:
                    self._nudge_seen = _text(entries[-1][0])
                    continue
                self._wake(key, [(_sid(_text(eid)), (eid, fields)) for eid, fields in entries])
        self._reading = {}

    def _wake(self, key: str, entries: list[tuple[tuple[int, int], Entry]]) -> None:
        # The read was at the oldest cursor of the stream's waiters: each gets the part newer than its own.
        waiters = self._waiters.get(key, {})
        for fut, cursor in list(waiters.items()):
            newer = [entry for sid, entry in entries if sid > cursor]
            if newer:
                del waiters[fut]
                if not fut.done():
                    fut.set_result(newer)
        if not waiters:
            self._waiters.pop(key, None)
