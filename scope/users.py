"""Local accounts, grants and API tokens: the persistent side of who may do what."""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, bindparam, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from scope.catalog import Catalog
from scope.errors import BadRequest, Conflict, NotFound
from scope.models import ApiToken, Grant, User, grant_subjects, utcnow
from scope.roles import GLOBAL, Role, parse_role

TOKEN_PREFIX = "vk_"
DEFAULT_TOKEN_TTL = dt.timedelta(days=90)
# Past this a lifetime is no longer an expiry (and now + it could overflow a datetime).
MAX_TOKEN_TTL = dt.timedelta(days=3650)
# How stale a token's last_used_at may get: at most one write per token per
# minute, so API traffic does not turn into database writes.
LAST_USED_GRANULARITY = dt.timedelta(minutes=1)
_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so a login attempt takes the
# same time whether or not the account exists.
_DUMMY_HASH = _hasher.hash("not-a-real-password-" + "x" * 16)


def normalize_email(email: str) -> str:
    e = email.strip().lower()
    if "@" not in e or e.startswith("@") or e.endswith("@") or len(e) > 320 or " " in e:
        raise BadRequest(f"not an e-mail address: {email!r}")
    return e


def normalize_subject(subject: str) -> str:
    s = subject.strip()
    if s.startswith("group:"):
        if len(s) == len("group:"):
            raise BadRequest("empty group name")
        return s
    return normalize_email(s)


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of randomness: a fast hash is enough and keeps
    # every API request cheap, unlike a password hash.
    return hashlib.sha256(token.encode()).hexdigest()


def _in_force(now: dt.datetime) -> Any:
    return or_(Grant.expires_at.is_(None), Grant.expires_at > now)


@dataclass(frozen=True)
class Standing:
    """What a worker needs to re-check a job's actor: who, whether enabled, and the grants."""

    id: int
    email: str
    name: str
    disabled: bool
    grants: list[tuple[str, str]]  # (environment, role)


class UserService:
    """Users, grants and tokens; takes a session factory (one transaction per call)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]
        users, grants = User.__table__.c, Grant.__table__.c
        # Built once: the worker re-checks every job's actor, and building the
        # statement cost more than running it.
        self._standing_user = select(users.id, users.email, users.name, users.disabled, users.groups).where(
            users.email == bindparam("email"))
        self._standing_grants = select(grants.environment, grants.role).where(
            grants.subject.in_(bindparam("subjects", expanding=True)),
            or_(grants.expires_at.is_(None), grants.expires_at > bindparam("now", type_=grants.expires_at.type)))

    # ---- users ------------------------------------------------------------
    def add_user(self, email: str, name: str = "", password: str | None = None) -> User:
        email = normalize_email(email)
        if password is not None and len(password) < 12:
            raise BadRequest("password must be at least 12 characters")
        with self.sessions.begin() as s:
            if s.scalar(select(User).where(User.email == email)):
                raise Conflict(f"user {email} already exists")
            user = User(email=email, name=name or email.split("@")[0],
                        password_hash=_hasher.hash(password) if password else None, groups=[])
            s.add(user)
        return user

    def list_users(self) -> list[User]:
        with self.sessions() as s:
            return list(s.scalars(select(User).order_by(User.email)))

    def set_disabled(self, email: str, disabled: bool = True) -> tuple[User, bool]:
        """Disable (or re-enable) an account; returns (user, changed). Its sessions and tokens
        stop at once because both are checked against the row on every request."""
        with self.sessions.begin() as s:
            user = s.scalar(select(User).where(User.email == email.strip().lower()))
            if user is None:
                raise NotFound(f"no user {email}")
            changed = user.disabled != disabled
            user.disabled = disabled
            return user, changed

    def delete_user(self, user_id: int) -> None:
        """Take back an account that was just added (its audit entry could not be written)."""
        with self.sessions.begin() as s:
            s.execute(delete(User).where(User.id == user_id))

    def get(self, user_id: int) -> User | None:
        with self.sessions() as s:
            return s.get(User, user_id)

    def by_email(self, email: str) -> User | None:
        with self.sessions() as s:
            return s.scalar(select(User).where(User.email == email.strip().lower()))

    def authenticate(self, email: str, password: str) -> User | None:
        """The user if the password matches a local, enabled account; else None (same timing)."""
        user = self.by_email(email) if email else None
        stored = user.password_hash if user and not user.disabled else None
        try:
            _hasher.verify(stored or _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if stored is None or user is None:
            return None
        with self.sessions.begin() as s:
            u = s.get(User, user.id)
            assert u is not None
            u.last_login_at = utcnow()
            if _hasher.check_needs_rehash(stored):
                u.password_hash = _hasher.hash(password)
        return user

    def upsert_sso_user(self, email: str, name: str, groups: list[str]) -> User:
        """Create at first SSO login; replace group membership at every login."""
        email = normalize_email(email)
        with self.sessions.begin() as s:
            user = s.scalar(select(User).where(User.email == email))
            if user is None:
                user = User(email=email, name=name or email.split("@")[0], groups=[])
                s.add(user)
            user.groups = sorted(set(groups))
            if name:
                user.name = name
            user.last_login_at = utcnow()
        return user

    # ---- grants -----------------------------------------------------------
    def standing(self, email: str, now: dt.datetime | None = None) -> Standing | None:
        """The user's current standing (None if unknown), read fresh for a run-time re-check.

        Grants whose ``expires_at`` has passed (at ``now``) no longer count."""
        with self.engine.connect() as c:
            u = c.execute(self._standing_user, {"email": email.strip().lower()}).one_or_none()
            if u is None:
                return None
            rows = c.execute(self._standing_grants, {"subjects": grant_subjects(u.email, u.groups),
                                                     "now": now or utcnow()}).all()
        return Standing(id=u.id, email=u.email, name=u.name, disabled=bool(u.disabled),
                        grants=[(r.environment, r.role) for r in rows])

    def grants_for(self, subjects: list[str], now: dt.datetime | None = None) -> list[Grant]:
        """The grants in force at ``now`` (a time-boxed grant stops counting at its expires_at)."""
        with self.sessions() as s:
            return list(s.scalars(select(Grant).where(Grant.subject.in_(subjects), _in_force(now or utcnow()))
                                  .order_by(Grant.environment, Grant.role)))

    def all_grants(self) -> list[Grant]:
        with self.sessions() as s:
            return list(s.scalars(select(Grant).order_by(Grant.environment, Grant.subject)))

    def grant(self, subject: str, environment: str, role: str, catalog: Catalog,
              by: str = "", expires_at: dt.datetime | None = None, reason: str = "") -> tuple[Grant, bool]:
        """Add a grant; returns (grant, created). Validates environment and role.

        ``expires_at`` makes it time-boxed. Granting again what is already held
        with another expiry (or lapsed) replaces that grant: the latest decision
        counts, and the return says created."""
        subject = normalize_subject(subject)
        if environment != GLOBAL and catalog.get(environment) is None:
            raise NotFound(f"unknown environment {environment!r}")
        try:
            r = parse_role(role, environment)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        with self.sessions() as s:
            existing = s.scalar(select(Grant).where(Grant.subject == subject, Grant.environment == environment,
                                                    Grant.role == r.value))
            now = utcnow()
            lapsed = existing is not None and existing.expires_at is not None and existing.expires_at <= now
            if existing and not lapsed and existing.expires_at == expires_at:
                return existing, False
            if existing:
                existing.expires_at, existing.created_by, existing.created_at = expires_at, by, now
                existing.reason, existing.expiry_recorded_at = reason, None
                s.commit()
                return existing, True
            g = Grant(subject=subject, environment=environment, role=r.value, created_by=by,
                      expires_at=expires_at, reason=reason, created_at=now)
            s.add(g)
            try:
                s.commit()
            except IntegrityError:  # a concurrent identical grant won the race
                s.rollback()
                existing = s.scalar(select(Grant).where(Grant.subject == subject,
                                                        Grant.environment == environment, Grant.role == r.value))
                assert existing is not None
                return existing, False
            return g, True

    def revoke(self, subject: str, environment: str, role: str | None = None) -> list[Grant]:
        """Remove the subject's grants in environment (one role, or all); returns what was removed."""
        subject = normalize_subject(subject)
        if role is not None:
            try:
                Role(role)
            except ValueError:
                raise BadRequest(f"unknown role {role!r}") from None
        with self.sessions.begin() as s:
            q = select(Grant).where(Grant.subject == subject, Grant.environment == environment)
            if role is not None:
                q = q.where(Grant.role == role)
            gone = list(s.scalars(q))
            if gone:
                s.execute(delete(Grant).where(Grant.id.in_([g.id for g in gone])))
            return gone

    def lapsed_grants(self, now: dt.datetime, stale_mark: dt.timedelta) -> list[Grant]:
        """Grants past their expiry whose grant.expire is not recorded (or whose recorder died)."""
        with self.sessions() as s:
            return list(s.scalars(select(Grant).where(
                Grant.expires_at <= now,
                or_(Grant.expiry_recorded_at.is_(None), Grant.expiry_recorded_at < now - stale_mark))))

    def mark_expiry(self, grant: Grant, now: dt.datetime) -> bool:
        """Claim the recording of one lapse (compare-and-set on the mark); True for exactly one caller."""
        with self.engine.begin() as c:
            q = update(Grant).where(Grant.id == grant.id, Grant.expires_at == grant.expires_at)
            q = q.where(Grant.expiry_recorded_at.is_(None) if grant.expiry_recorded_at is None
                        else Grant.expiry_recorded_at == grant.expiry_recorded_at)
            return bool(c.execute(q.values(expiry_recorded_at=now)).rowcount == 1)

    def unmark_expiry(self, grant_id: int) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Grant).where(Grant.id == grant_id).values(expiry_recorded_at=None))

    def drop_expired(self, grant_id: int, now: dt.datetime) -> None:
        """Delete a lapsed grant whose expiry is recorded (a re-grant in between is left alone)."""
        with self.sessions.begin() as s:
            s.execute(delete(Grant).where(Grant.id == grant_id, Grant.expires_at <= now,
                                          Grant.expiry_recorded_at.is_not(None)))

    # ---- tokens -----------------------------------------------------------
    def create_token(self, email: str, name: str = "",
                     expires_in: dt.timedelta = DEFAULT_TOKEN_TTL) -> tuple[ApiToken, str]:
        """A new token for the user; the clear value is returned once and never stored."""
        if not dt.timedelta(0) < expires_in <= MAX_TOKEN_TTL:
            raise BadRequest(f"a token's lifetime must be more than 0 and at most {MAX_TOKEN_TTL.days} days")
        with self.sessions.begin() as s:
            user = s.scalar(select(User).where(User.email == email.strip().lower()))
            if user is None:
                raise NotFound(f"no user {email}")
            clear = TOKEN_PREFIX + secrets.token_urlsafe(32)
            tok = ApiToken(user_id=user.id, name=name, token_hash=hash_token(clear), prefix=clear[:10],
                           expires_at=utcnow() + expires_in)
            s.add(tok)
        return tok, clear

    def list_tokens(self, email: str | None = None) -> list[tuple[ApiToken, str]]:
        """Tokens (newest first) with their owner's e-mail; of one user if ``email`` is given."""
        q = select(ApiToken, User.email).join(User, User.id == ApiToken.user_id) \
            .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        if email is not None:
            q = q.where(User.email == email.strip().lower())
        with self.sessions() as s:
            return [(t, e) for t, e in s.execute(q).all()]

    def revoke_token(self, token_id: int) -> tuple[ApiToken, bool]:
        """Revoke at once; returns (token, changed) — revoking a revoked token changes nothing."""
        with self.sessions.begin() as s:
            tok = s.get(ApiToken, token_id)
            if tok is None:
                raise NotFound(f"no token {token_id}")
            changed = tok.revoked_at is None
            tok.revoked_at = tok.revoked_at or utcnow()
            return tok, changed

    def unrevoke_token(self, token_id: int) -> None:
        """Take back a revocation whose audit entry could not be written."""
        with self.sessions.begin() as s:
            s.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=None))

    def user_for_token(self, clear: str) -> User | None:
        """The owner of a live token (not revoked, not expired, owner enabled), else None."""
        if not clear.startswith(TOKEN_PREFIX):
            return None
        now = utcnow()
        with self.sessions() as s:
            row = s.execute(select(ApiToken.id, ApiToken.revoked_at, ApiToken.expires_at, ApiToken.last_used_at, User)
                            .join(User, User.id == ApiToken.user_id)
                            .where(ApiToken.token_hash == hash_token(clear))).one_or_none()
            if row is None:
                return None
            tid, revoked_at, expires_at, last_used_at, user = row
            if revoked_at is not None or expires_at <= now or user.disabled:
                return None
            if last_used_at is None or now - last_used_at >= LAST_USED_GRANULARITY:
                # Compare-and-set: of many processes seeing the same stale stamp, one writes.
                s.execute(update(ApiToken).where(
                    ApiToken.id == tid,
                    or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - LAST_USED_GRANULARITY))
                    .values(last_used_at=now))
                s.commit()
            return user
