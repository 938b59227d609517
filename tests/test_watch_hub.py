"""StreamHub: one shared XREAD per process, fanned out to waiters by cursor (real Redis)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

import redis as redis_lib

from web.watch import StreamHub


def run(coro):  # noqa: ANN001, ANN201 - a tiny driver for the async tests below
    # A loop of its own in a thread of its own: earlier tests in the session (Playwright's sync
    # API) may leave an event loop running in this thread, where asyncio.run() refuses to start.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_waiters_share_a_read_and_get_what_is_newer_than_their_cursor(redis_url):
    r = redis_lib.Redis.from_url(redis_url)
    a1 = r.xadd("s:a", {"n": "1"}).decode()
    b1 = r.xadd("s:b", {"n": "1"}).decode()

    async def main() -> None:
        hub = StreamHub.from_url(redis_url)
        first, second = hub.watch("s:a", a1), hub.watch("s:a", a1)
        other = hub.watch("s:b", b1)
        await asyncio.sleep(0.2)
        a2 = r.xadd("s:a", {"n": "2"}).decode()
        got = await asyncio.wait_for(asyncio.gather(first, second), 2)
        assert [[e[0].decode() for e in g] for g in got] == [[a2], [a2]]
        assert not other.done()
        # A waiter further along than the new entry keeps waiting; an older one gets both.
        ahead, behind = hub.watch("s:a", a2), hub.watch("s:a", a1)
        done = await asyncio.wait_for(behind, 2)
        assert [e[0].decode() for e in done] == [a2]
        await asyncio.sleep(0.2)
        assert not ahead.done()
        a3 = r.xadd("s:a", {"n": "3"}).decode()
        assert [e[0].decode() for e in await asyncio.wait_for(ahead, 2)] == [a3]
        for f in (other,):
            hub.forget("s:b", f)
        assert hub.watched == 0
        hub.close()
        await hub.r.aclose()

    run(main())
    r.close()


def test_a_stream_joining_a_blocked_read_is_watched_at_once(redis_url):
    """The read blocks up to 10 s; a new stream's waiter must not wait for it to run out."""
    r = redis_lib.Redis.from_url(redis_url)
    c1 = r.xadd("s:c", {"n": "1"}).decode()
    d1 = r.xadd("s:d", {"n": "1"}).decode()

    async def main() -> None:
        hub = StreamHub.from_url(redis_url)
        hub.watch("s:c", c1)
        await asyncio.sleep(0.3)  # the read is blocked on s:c alone now
        late = hub.watch("s:d", d1)
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        r.xadd("s:d", {"n": "2"})
        await asyncio.wait_for(late, 8)
        assert time.monotonic() - t0 < 5  # woke on the add, not when the 10 s block ran out
        # Closing answers every remaining waiter with nothing, and later ones at once.
        remaining = hub.watch("s:c", c1)
        hub.close()
        assert await remaining == [] and await hub.watch("s:e", "0-0") == []
        await hub.r.aclose()

    run(main())
    r.close()


def test_an_event_appended_before_the_waiter_registers_still_wakes_it(redis_url):
    """Waiting by cursor, not '$': nothing between the view's read and the wait is lost."""
    r = redis_lib.Redis.from_url(redis_url)
    seen = r.xadd("s:f", {"n": "1"}).decode()
    missed = r.xadd("s:f", {"n": "2"}).decode()  # lands after the view read, before the wait

    async def main() -> None:
        hub = StreamHub.from_url(redis_url)
        got = await asyncio.wait_for(hub.watch("s:f", seen), 2)
        assert [e[0].decode() for e in got] == [missed]
        hub.close()
        await hub.r.aclose()

    run(main())
    r.close()
