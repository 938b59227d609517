"""Signed outbound webhooks (``[[environments.X.notify]]``): one POST, and what its failure means.

The body is signed with HMAC-SHA256 under the target's secret and sent as
``X-Valetkey-Signature-256: sha256=<hex>`` (the scheme GitHub uses for its
webhooks, which receivers already know how to check). The URL may hold a token:
it never appears in an error, a log line or the audit trail.
"""
from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request

from scope.errors import OperationFailed, TransientError

SIGNATURE_HEADER = "X-Valetkey-Signature-256"
DELIVERY_HEADER = "X-Valetkey-Delivery"
TIMEOUT = 10


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would resend (or drop) a signed body to a place nobody configured.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def deliver(url: str, secret: str, body: bytes, delivery_id: str) -> int:
    """POST the signed body; returns the status. TransientError: worth retrying (timeouts, 5xx, 408, 429);
    OperationFailed: the receiver refused it and a retry would be refused the same way."""
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "valetkey-notify",
        SIGNATURE_HEADER: signature(secret, body), DELIVERY_HEADER: delivery_id})
    try:
        with _OPENER.open(req, timeout=TIMEOUT) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in (408, 429):
            raise TransientError(f"the receiver answered {e.code}") from None
        raise OperationFailed(f"the receiver refused the delivery ({e.code})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TransientError(f"the receiver could not be reached ({type(reason).__name__})") from None
