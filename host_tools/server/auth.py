"""Who may call the server.

- Devices: ``Authorization: Bearer <token>`` with token = hex HMAC-SHA256(fleet secret, device_id)
  (host_tools.fleet.device_token); the device id comes from ``X-Mpota-Device`` or the body.
- Operators (the ``mpota rollout`` / ``mpota devices`` CLI, POST /v1/devices):
  ``Authorization: Bearer <operator token>`` with operator token = hex HMAC-SHA256(fleet secret,
  "mpota operator"). The space makes it impossible for a device id to collide with it, so no
  device token ever equals the operator token. Anyone holding the fleet secret can derive it
  (``mpota fleet token --operator``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from host_tools.fleet import DEVICE_ID

OPERATOR_LABEL = b"mpota operator"


def operator_token(secret: bytes) -> str:
    return hmac.new(secret, OPERATOR_LABEL, hashlib.sha256).hexdigest()


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class TokenCache:
    """Expected device tokens, computed once per device (the HMAC is most of an auth check).

    Only a device that proved its token is cached, so a flood of made-up ids with junk tokens
    costs one HMAC each and no memory; past `limit` devices the oldest entry makes room."""

    def __init__(self, secret: bytes, limit: int = 200_000) -> None:
        self._secret = secret
        self._tokens: OrderedDict[str, bytes] = OrderedDict()  # popitem(last=False) is O(1)
        self._limit = limit
        self.operator = operator_token(secret).encode()

    def __len__(self) -> int:
        return len(self._tokens)

    def device_ok(self, device_id: str, token: str) -> bool:
        """device_id is a device id (matched whole) and token is its token."""
        given = token.encode("utf-8", "replace")
        expected = self._tokens.get(device_id)
        if expected is not None:  # only ids that matched are cached
            return hmac.compare_digest(expected, given)
        if not DEVICE_ID.fullmatch(device_id):
            return False
        expected = hmac.new(self._secret, device_id.encode(), hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, given):
            return False
        if len(self._tokens) >= self._limit:
            self._tokens.popitem(last=False)
        self._tokens[device_id] = expected
        return True

    def operator_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.operator, token.encode("utf-8", "replace"))
