"""Rollout eligibility: the same sticky bucket function the device computes.

bucket = first 4 bytes of SHA-256(rollout_id + ":" + device_id), big-endian, mod 10000, / 100,
so a value in [0.00, 99.99]. A device is eligible when its group is in the rollout's groups or
its bucket is below the percentage. Raising the percentage only ever adds devices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def bucket(rollout_id: str, device_id: str) -> float:
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return (int.from_bytes(digest[:4], "big") % 10000) / 100


def bucket_int(rollout_id: str, device_id: str) -> int:
    """The bucket times 100 (0..9999): exact integer comparisons, no float rounding."""
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 10000


def is_eligible(rollout: Mapping[str, object], device_id: str, group: str | None) -> bool:
    """Eligibility from a channel document's rollout object (state is not considered here)."""
    groups = rollout.get("groups") or []
    if group is not None and isinstance(groups, Iterable) and group in groups:
        return True
    percentage = rollout.get("percentage") or 0.0
    if not isinstance(percentage, (int, float)):
        return False
    return bucket(str(rollout["id"]), device_id) < float(percentage)
