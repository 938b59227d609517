"""Password-guessing brake for local login, shared by every web process through Redis.

A sliding log per account and per address (a sorted set of attempt times,
scored by Redis' own clock): at most 5 failed sign-ins for one account and 20
from one address within any 15 minutes. Chosen over a fixed INCR/EXPIRE
window because a fixed window lets twice the limit through around its edge
(4 guesses at minute 14, 4 more at minute 16); the log is exact, and it stays
small because it is trimmed to the window and to the limit on every attempt.

Each attempt *reserves* its place before the password is checked, in one Lua
script (atomic in Redis): concurrent guesses from many threads and processes
cannot all slip past the count while their slow argon2 checks run. A
successful sign-in gives its reservation back and clears the account's log
(its owner knew the password); the address log keeps its failures, or one
valid account would let a guesser wipe the address count. Refused attempts
are not logged, so the lock lifts 15 minutes after the failures that caused
it, whatever a guesser keeps sending.
"""
from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass

import redis

from scope.errors import Unavailable

WINDOW_SECONDS = 15 * 60
ACCOUNT_LIMIT = 5
ADDRESS_LIMIT = 20
_PREFIX = "valetkey:login-failures:"

# KEYS: the logs to check; ARGV: window, member, then one limit per key.
# Returns 0 with the attempt reserved in every log, or the seconds until the
# fullest log has room again (nothing reserved).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, -limit, -limit, 'WITHSCORES')
    local left = tonumber(oldest[2]) + window - now
    if left > wait then wait = left end
  end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 2])
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('ZREMRANGEBYRANK', key, 0, -(limit + 1))
  redis.call('EXPIRE', key, window)
end
return 0
"""


@dataclass(frozen=True)
class Attempt:
    """A reserved sign-in attempt; ``retry_after`` > 0 means refused (seconds to wait)."""

    keys: tuple[str, ...]
    member: str
    retry_after: int


class LoginThrottle:
    def __init__(self, r: redis.Redis, window: int = WINDOW_SECONDS, account_limit: int = ACCOUNT_LIMIT,
                 address_limit: int = ADDRESS_LIMIT) -> None:
        self.r, self.window = r, window
        self.account_limit, self.address_limit = account_limit, address_limit
        self._reserve = r.register_script(_RESERVE)

    def _account_key(self, email: str) -> str:
        # Hashed: Redis holds no list of the e-mail addresses people typed.
        return _PREFIX + "account:" + hashlib.sha256(email.encode()).hexdigest()

    def begin(self, email: str, address: str) -> Attempt:
        """Reserve an attempt for ``email`` (may be blank) from ``address``, or say how long to wait."""
        keys = [_PREFIX + "address:" + address]
        limits = [self.address_limit]
        if email:
            keys.append(self._account_key(email))
            limits.append(self.account_limit)
        member = secrets.token_hex(8)
        try:
            wait = float(self._reserve(keys=keys, args=[self.window, member, *limits]))
        except redis.RedisError as e:
            # Fail closed: without the counters nobody may try a password.
            raise Unavailable("Sign-in is unavailable right now; try again shortly.") from e
        return Attempt(tuple(keys), member, math.ceil(wait) if wait > 0 else 0)

    def succeeded(self, attempt: Attempt, email: str) -> None:
        """A correct password: the attempt was no failure, and the account starts afresh."""
        try:
            with self.r.pipeline() as p:
                for key in attempt.keys:
                    p.zrem(key, attempt.member)
                p.delete(self._account_key(email))
                p.execute()
        except redis.RedisError:
            pass  # the sign-in stands; at worst one success counts as a failure for 15 minutes
