"""The one JSON body parser of every route: bounded nesting, valid Unicode, errors naming ``body``.

Python's json module recurses once per nesting level, so a body nested tens
of thousands deep ends in RecursionError (a 500) before any schema or view
sees it. The nesting is therefore measured on the raw text first (strings
removed, brackets counted, all in C-speed calls), and only a body within the
limit is parsed. A JSON string may also hold a lone surrogate (``"\\ud800"``),
which no database, Redis or log line can encode: refused here, naming the
field, instead of failing later as a 5xx.

Used by Flask's ``request.get_json`` (via the app's JSON provider), by the
flask-smorest argument parser of the API, and by the webhook.
"""
from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from flask.json.provider import DefaultJSONProvider

from scope.errors import ValidationFailed

MAX_DEPTH = 32
# A string, or an unterminated one up to the end of the text: the pattern can never fail once it
# has started, so the scan stays linear (a pattern requiring the closing quote would rescan the
# rest of the text from every unmatched quote: quadratic on a body like "\"\"\"...).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH = {"[": 1, "{": 1, "]": -1, "}": -1}


def _bad(message: str, field: str = "body") -> ValidationFailed:
    return ValidationFailed({field: [message]})


def nesting(text: str) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(_DEPTH[c] for c in brackets), default=0)


def _unencodable(value: Any, path: str) -> str | None:
    """The path of the first string (or key) that is not valid Unicode, e.g. a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        sub = f"{path}.{k}" if path != "body" else str(k)
        bad = _unencodable(k, sub) if isinstance(k, str) else None
        bad = bad or _unencodable(v, sub)
        if bad:
            return bad
    return None


def loads(data: str | bytes | bytearray) -> Any:
    """Parse a request body; ValidationFailed (400) naming ``body`` or the offending field."""
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("The body is not UTF-8 text.") from None
    else:
        text = data
    if nesting(text) > MAX_DEPTH:
        raise _bad(f"JSON nested deeper than {MAX_DEPTH} levels is refused.")
    try:
        value = json.loads(text)
    except ValueError:
        raise _bad("The body is not valid JSON.") from None
    except RecursionError:  # unreachable after the depth check; kept so that it can never be a 500
        raise _bad(f"JSON nested deeper than {MAX_DEPTH} levels is refused.") from None
    bad = _unencodable(value, "body")
    if bad:
        raise _bad("Not valid Unicode text (a lone surrogate such as \\ud800).", bad)
    return value


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with ``loads`` bounded as above (``request.get_json`` uses it)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)
