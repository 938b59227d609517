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

With ``shared`` answers (cloud/ecs_cache.py ServiceAnswers, Redis), a name is
first looked up there (one GET-sized MGET, before queueing: a name another web
process has just read never waits behind this process's call in flight), and
a call first re-reads its queued names there in one MGET (another process may
have answered them while they waited); only the rest go to DescribeServices,
and the services it found are stored for the other processes. An answer from
the shared store holds only ``serviceName``, ``status`` and ``taskDefinition``.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, NamedTuple

from cloud.ecs import DESCRIBE_SERVICES_MAX, EcsReader
from cloud.ecs_cache import ServiceAnswers
from cloud.errors import AwsError, aws_error
from scope.errors import NotFound

if TYPE_CHECKING:
    from mypy_boto3_ecs.type_defs import ServiceTypeDef

WAIT_TIMEOUT_CODE = "DescribeServicesWaitTimeout"


class Answer(NamedTuple):
    """A found service and how old the answer is (seconds since it was read from ECS; 0 for this call's)."""

    service: ServiceTypeDef
    age: float


class _Lookup:
    """One name's answer, shared by every thread that asked for it while it was queued or in flight."""

    __slots__ = ("described", "done", "error", "name", "queued", "shared", "waited", "waiters")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queued = True  # not yet taken into a call
        self.done = False
        self.described: list[ServiceTypeDef] = []  # the answer of the call it was in
        self.error: BaseException | None = None
        self.shared: Answer | None = None  # answered from the shared store instead
        self.waited = False  # queued behind another call: worth re-reading in the shared store
        self.waiters = 0


class DescribeBatcher:
    """Coalesces the concurrent one-service lookups of one cluster (one instance per process and cluster)."""

    def __init__(self, reader: EcsReader, max_wait: float = 10.0, shared: ServiceAnswers | None = None) -> None:
        self.reader, self.max_wait, self.shared = reader, max_wait, shared
        self._cond = threading.Condition()
        self._lookups: dict[str, _Lookup] = {}  # name -> its lookup, while queued or in flight
        self._queue: list[_Lookup] = []  # queued, oldest first
        self._calling = False  # a DescribeServices call is in flight

    def service(self, name: str) -> ServiceTypeDef:
        """``name``'s ACTIVE service; NotFound when ECS reports it missing or not ACTIVE; AwsError on failure."""
        return self.lookup(name).service

    def lookup(self, name: str) -> Answer:
        """``service`` with the answer's age (an answer of the shared store may be seconds old)."""
        if self.shared is not None:
            hit = self.shared.get_many([name]).get(name)
            if hit is not None:
                return self._from_shared(name, *hit)
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
                    lookup.waited = True
                    self._cond.wait(left)
            finally:
                lookup.waiters -= 1
        if lookup.error is not None:
            raise self._own_copy(lookup.error) from lookup.error
        if lookup.shared is not None:
            return lookup.shared
        return Answer(EcsReader.active_named(name, lookup.described), 0.0)

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
        hits: dict[str, tuple[str, float]] = {}
        self._cond.release()
        try:
            if self.shared is not None:
                # ``mine`` was looked up a moment ago unless it waited; the others queued behind a call.
                hits = self.shared.get_many([lk.name for lk in batch if lk is not mine or lk.waited])
            asked = [lk.name for lk in batch if lk.name not in hits]
            if asked:
                at = self.shared.clock() if self.shared is not None else 0.0
                described = self.reader.describe(asked)
                if self.shared is not None:
                    self.shared.put_many(self._found(asked, described), at)
        except Exception as e:  # noqa: BLE001 - every waiter of the batch gets it, whatever it is
            error = e
        except BaseException:
            # This thread is being torn down: its waiters must not read "no answer" as NotFound.
            error = RuntimeError("the thread making the call stopped")
            raise
        finally:
            self._cond.acquire()
            for lk in batch:
                hit = hits.get(lk.name)
                if hit is not None:  # answered by the shared store, whatever became of the call
                    lk.shared, lk.error = self._from_shared(lk.name, *hit), None
                else:
                    lk.described, lk.error = described, error
                lk.done = True
                del self._lookups[lk.name]
            self._calling = False
            self._cond.notify_all()  # the answered return; one of the queued makes the next call

    @staticmethod
    def _found(names: list[str], described: list[ServiceTypeDef]) -> dict[str, str]:
        """name -> task definition ARN of the names that are ACTIVE services (NotFound is not an answer to keep)."""
        found = {}
        for name in names:
            try:
                found[name] = EcsReader.active_named(name, described).get("taskDefinition", "")
            except NotFound:
                continue
        return found

    @staticmethod
    def _from_shared(name: str, task_definition: str, age: float) -> Answer:
        return Answer({"serviceName": name, "status": "ACTIVE", "taskDefinition": task_definition}, age)

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
