"""Text from values that arrive as bytes or str (Redis replies, HTTP headers)."""
from __future__ import annotations

from typing import Any


def as_text(value: Any) -> str:
    """UTF-8 text of ``value``; bytes are decoded, anything else is ``str()``-ed."""
    return value.decode() if isinstance(value, bytes) else str(value)
