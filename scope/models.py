"""Database tables (SQLAlchemy 2 declarative). Alembic migrations in scope/migrations follow these."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from scope.times import utcnow  # noqa: F401 - models and their callers share the one clock


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops tzinfo otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def grant_subjects(email: str, groups: list[str] | None) -> list[str]:
    """Who a user is for grants: the e-mail and each SSO group as ``group:NAME``."""
    return [email] + [f"group:{g}" for g in (groups or [])]


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(200), default=None)
    groups: Mapped[list[str]] = mapped_column(default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    tokens: Mapped[list["ApiToken"]] = relationship(back_populates="user")

    @property
    def subjects(self) -> list[str]:
        return grant_subjects(self.email, self.groups)


class Grant(Base):
    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("subject", "environment", "role", name="uq_grant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(320), index=True)
    environment: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(320), default="")
    # Time-boxed grants stop counting at this instant (None: until revoked).
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    reason: Mapped[str] = mapped_column(String(500), default="")
    # Set by the scheduler that records this grant's grant.expire: the mark makes
    # the entry once-only across scheduler instances (see wiring/access_changes.py).
    expiry_recorded_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    expires_at: Mapped[dt.datetime] = mapped_column()  # every token expires (SOC 2: no eternal credentials)

    user: Mapped[User] = relationship(back_populates="tokens")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_env_created", "environment", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    action: Mapped[str] = mapped_column(String(40))
    environment: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    detail: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(20))
    request_id: Mapped[str] = mapped_column(String(64), default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # none_as_null: an unset state is SQL NULL, not the JSON text 'null' (IS NULL must find it).
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    # Set to "env/target" while the job is queued or running, NULL after: the
    # unique index makes "one mutating job per target" hold across processes.
    active_key: Mapped[str | None] = mapped_column(String(400), unique=True, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Two-person approval (docs/approvals.md) and the requester's reason.
    reason: Mapped[str] = mapped_column(Text, default="")
    approved_by: Mapped[str | None] = mapped_column(String(320), default=None)
    approved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)


class AccessRequest(Base):
    """A person's request for a time-boxed role in an environment, decided by its approvers."""

    __tablename__ = "access_requests"
    __table_args__ = (Index("ix_access_requests_status", "status", "environment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    requester: Mapped[str] = mapped_column(String(320), index=True)
    environment: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    duration_seconds: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending, approved, rejected
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(320), default=None)
    decided_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    decision_reason: Mapped[str] = mapped_column(String(500), default="")
    grant_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """One row per audit event; written only by the exporter, append-only, hash-chained."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_time", "time"),
        Index("ix_audit_env_time", "environment", "time"),
        Index("ix_audit_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(64), unique=True)
    time: Mapped[dt.datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(20))
    environment: Mapped[str] = mapped_column(String(100), default="")
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(String(300), default="")
    outcome: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    request_id: Mapped[str] = mapped_column(String(64), default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row that holds the end of the hash chain; updating it first serializes appenders."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class SchedulePause(Base):
    """An operator's pause of an environment's schedule (one row per environment; no row = not paused).

    In the database rather than only in Redis: a pause is a promise to a person
    ("staging stays as it is over the weekend") and must survive a Redis flush
    or restart as much as the remembered counts do.
    """

    __tablename__ = "schedule_pauses"

    environment: Mapped[str] = mapped_column(String(100), primary_key=True)
    until: Mapped[dt.datetime | None] = mapped_column(default=None)  # None: until resumed
    paused_by: Mapped[str] = mapped_column(String(320))
    paused_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ScheduledService(Base):
    """A service the scheduler scaled down, with the desired count to restore when the window opens.

    ``state`` makes each step resumable after a crash: ``scaling_down`` is
    written before UpdateService(0), ``down`` after its audit entry;
    ``scaling_up`` before the restore; the row is deleted after the restore's
    audit entry.
    """

    __tablename__ = "schedule_scaled_services"
    __table_args__ = (UniqueConstraint("environment", "service", name="uq_schedule_scaled_service"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment: Mapped[str] = mapped_column(String(100))
    service: Mapped[str] = mapped_column(String(255))
    desired: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The Application Auto Scaling MinCapacity lowered to 0 for the night (restored with the count).
    min_capacity: Mapped[int | None] = mapped_column(Integer, default=None)


class SchedulePeriod(Base):
    """The down period (named by the instant it ends) whose scale-down the scheduler completed.

    Scaling down happens once per down period, not every minute: a service
    someone scales up by hand at night, or creates while the environment is
    down, is theirs until the next window. Resuming a pause deletes the row,
    so the next tick enforces the schedule again.
    """

    __tablename__ = "schedule_periods"

    environment: Mapped[str] = mapped_column(String(100), primary_key=True)
    period: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
