"""One-service lookups of a cluster, coalesced into DescribeServices calls of up to ten names.

Many threads of a process each asking "does service X exist?" would each make
a DescribeServices call of one name, and every call draws a token from the
service-read budget (cloud/budget.py) whatever its number of names. Here, at
most one call per cluster is in flight at a time: a thread that misses while
one is in flight queues its name, and when the call ends one of the queued
threads makes the next call with its own name and up to nine more queued
ones (oldest first). A lone lookup calls at once; a name already queued or in
flight is not asked again (the later thread waits for the same answer).

Each thread gets its own answer: its service, NotFound exactly as
``EcsReader.service`` decides it, or the AwsError of the call its name was in.
A thread waits at most ``max_wait`` seconds for another thread's call, then
gets a transient AwsError (503 with Retry-After, as AWS' own timeouts).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from cloud.ecs import DESCRIBE_SERVICES_MAX, EcsReader
from cloud.errors import AwsError, aws_error

if TYPE_CHECKING:
    from mypy_boto3_ecs.type_defs import ServiceTypeDef

WAIT_TIMEOUT_CODE = "DescribeServicesWaitTimeout"


class _Lookup:
    """One name's answer, shared by every thread that asked for it while it was queued or in flight."""

    __slots__ = ("described", "done", "error", "name", "queued", "waiters")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queued = True  # not yet taken into a call
        self.done = False
        self.described: list[ServiceTypeDef] = []  # the answer of the call it was in
        self.error: BaseException | None = None
        self.waiters = 0


class DescribeBatcher:
    """Coalesces the concurrent one-service lookups of one cluster (one instance per process and cluster)."""

    def __init__(self, reader: EcsReader, max_wait: float = 10.0) -> None:
        self.reader, self.max_wait = reader, max_wait
        self._cond = threading.Condition()
        self._lookups: dict[str, _Lookup] = {}  # name -> its lookup, while queued or in flight
        self._queue: list[_Lookup] = []  # queued, oldest first
        self._calling = False  # a DescribeServices call is in flight

    def service(self, name: str) -> ServiceTypeDef:
        """``name``'s ACTIVE service; NotFound when ECS reports it missing or not ACTIVE; AwsError on failure."""
        deadline = time.monotonic() + self.max_wait
        with self._cond:
            lookup = self._lookups.get(name)
            if lookup is None:
                lookup = self._lookups[name] = _Lookup(name)
                self._queue.append(lookup)
            lookup.waiters += 1
            try:
                while not lookup.done:
                    if lookup.queued and not self._calling:
                        self._call(lookup)  # our turn: returns with the lookup done
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._timed_out(lookup)
                    self._cond.wait(left)
            finally:
                lookup.waiters -= 1
        if lookup.error is not None:
            raise self._own_copy(lookup.error) from lookup.error
        return EcsReader.active_named(name, lookup.described)

    def waiting(self) -> int:
        """Threads waiting for a call another thread makes (for tests and metrics)."""
        with self._cond:
            return sum(lk.waiters for lk in self._lookups.values()) - (1 if self._calling else 0)

    # ---- under the lock -------------------------------------------------------------
    def _call(self, mine: _Lookup) -> None:
        """Make one call for ``mine`` and up to nine more queued names; entered and left holding the lock."""
        others = [lk for lk in self._queue if lk is not mine][:DESCRIBE_SERVICES_MAX - 1]
        batch = [mine, *others]
        taken = set(map(id, batch))
        self._queue = [lk for lk in self._queue if id(lk) not in taken]
        for lk in batch:
            lk.queued = False
        self._calling = True
        described: list[ServiceTypeDef] = []
        error: BaseException | None = None
        self._cond.release()
        try:
            described = self.reader.describe([lk.name for lk in batch])
        except Exception as e:  # noqa: BLE001 - every waiter of the batch gets it, whatever it is
            error = e
        except BaseException:
            # This thread is being torn down: its waiters must not read "no answer" as NotFound.
            error = RuntimeError("the thread making the call stopped")
            raise
        finally:
            self._cond.acquire()
            for lk in batch:
                lk.described, lk.error, lk.done = described, error, True
                del self._lookups[lk.name]
            self._calling = False
            self._cond.notify_all()  # the answered return; one of the queued makes the next call

    def _timed_out(self, lookup: _Lookup) -> AwsError:
        if lookup.queued and lookup.waiters == 1:  # nobody else wants it: no call is made for it
            self._queue.remove(lookup)
            del self._lookups[lookup.name]
        return AwsError(f"AWS did not answer in time while describing services in cluster {self.reader.cluster} "
                        f"(waited {self.max_wait:.0f}s for a DescribeServices call shared with other requests).",
                        WAIT_TIMEOUT_CODE, transient=True)

    def _own_copy(self, e: BaseException) -> AwsError:
        """A fresh error per waiter (one exception object raised in many threads would share a traceback)."""
        if isinstance(e, AwsError):
            return AwsError(e.detail, e.code, transient=e.transient, throttled=e.throttled)
        return aws_error(e, f"describing services in cluster {self.reader.cluster}")
