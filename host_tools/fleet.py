"""Fleet identity: device ids and groups, the fleet secret and per-device report tokens.

token = hex HMAC-SHA256(secret, device_id). The server derives it again to check a report,
so it stores one secret, not one token per device.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from host_tools.errors import MpotaError
from host_tools.fsutil import atomic_write_text

# Matched whole (fullmatch): `$` would also accept a trailing newline. The server checks with it too.
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# A device group: what a rollout plan's stages target and what a device belongs to (`mpota deploy
# --group`, /mpota.json). device/mpota/config.py checks the same rule in MicroPython
# (tests/test_shared_definitions.py holds the two together).
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
DEFAULT_GROUP = "general"


class FleetError(MpotaError):
    pass


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.fullmatch(device_id):
        raise FleetError(
            f"invalid device id {device_id!r}: 1-64 characters of letters, digits, '.', '_', ':', '-'"
        )
    return device_id


def create_secret(path: str | os.PathLike[str], force: bool = False) -> bytes:
    """Write a new 32-byte secret (hex, mode 0600); refuse to overwrite unless force."""
    target = Path(path)
    if target.exists() and not force:
        raise FleetError(f"{target} already exists (use --force to replace the fleet secret)")
    secret = secrets.token_bytes(32)
    atomic_write_text(target, secret.hex() + "\n", mode=0o600)
    return secret


def load_secret(path: str | os.PathLike[str]) -> bytes:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise FleetError(f"cannot read fleet secret {path}: {exc.strerror}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise FleetError(f"{path} is not a fleet secret (expected hex)") from None
    if len(secret) < 16:
        raise FleetError(f"{path}: fleet secret too short ({len(secret)} bytes, need >= 16)")
    return secret


def device_token(secret: bytes, device_id: str) -> str:
    check_device_id(device_id)
    return hmac.new(secret, device_id.encode(), hashlib.sha256).hexdigest()


def token_matches(secret: bytes, device_id: str, token: str) -> bool:
    expected = hmac.new(secret, device_id.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, token)
