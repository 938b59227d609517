"""Outcome audit entries that could not be appended when their job finished, appended once Redis is back.

``JobService.finish`` commits the terminal row (the durable truth) and then
appends the outcome. When Redis cannot take it, the worker does not fail or
wait: the entry goes to this process's outbox, which tries again every second
and appends it within a second or so of Redis coming back. Should the process
die first, the sweeper finds the outcome missing and appends it
(jobs/outcomes.py). Every appender of an outcome goes through
``AuditLog.record_once`` with the job's key, so racing appenders append it once.
"""
from __future__ import annotations

import logging
import threading

from jobs.audit_stream import AuditEvent, AuditLog
from scope.errors import Unavailable

log = logging.getLogger(__name__)

OUTCOME_KEY_PREFIX = "valetkey:outcome-appended:"
OUTCOME_KEY_TTL = 2 * 24 * 3600  # longer than the sweeper's look-back (jobs/outcomes.py HORIZON)


def outcome_key(job_id: str) -> str:
    return OUTCOME_KEY_PREFIX + job_id


class OutcomeOutbox:
    def __init__(self, audit: AuditLog, interval: float = 1.0) -> None:
        self.audit, self.interval = audit, interval
        self._pending: dict[str, AuditEvent] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def put(self, event: AuditEvent) -> None:
        with self._lock:
            self._pending[event.job_id] = event
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="outcome-outbox", daemon=True)
                self._thread.start()

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def flush(self) -> int:
        """Try every pending entry once; returns how many are still pending (Redis still down)."""
        for job_id in self.pending():
            with self._lock:
                event = self._pending.get(job_id)
            if event is None:
                continue
            try:
                if self.audit.record_once(outcome_key(job_id), event, OUTCOME_KEY_TTL):
                    log.warning("job %s: its %s outcome reached the audit trail after an outage", job_id,
                                event.outcome)
            except Unavailable:
                break  # still down: the rest waits for the next round
            with self._lock:
                self._pending.pop(job_id, None)
        return len(self.pending())

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
            self.flush()
