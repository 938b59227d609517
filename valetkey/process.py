"""Long-running processes stop cleanly on SIGTERM/SIGINT: a shared stop event."""
from __future__ import annotations

import signal
import threading
from typing import Any


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT (Procfile managers send SIGTERM, Ctrl-C sends SIGINT)."""
    ev = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        ev.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return ev
