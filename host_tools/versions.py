"""Release versions: MAJOR.MINOR.PATCH with an optional -prerelease, compared as SemVer 2.0.

The rule (the device applies the same one):
- three dot-separated numbers without leading zeros, then optionally ``-`` and dot-separated
  identifiers of ``[0-9A-Za-z-]``; no ``+build`` part (the version names a folder in the feed);
  at most 31 characters (it must fit ``esp_app_desc_t.version``);
- numbers compare numerically, left to right; a prerelease sorts before its release
  (``1.2.0-rc.1 < 1.2.0``); prerelease identifiers compare one by one, numeric ones as numbers,
  numeric before alphanumeric, alphanumeric ones in ASCII order, and a shorter list that is a
  prefix of a longer one sorts first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from host_tools.errors import MpotaError

MAX_VERSION_LENGTH = 31

_NUM = r"(0|[1-9][0-9]*)"
_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION = re.compile(rf"^{_NUM}\.{_NUM}\.{_NUM}(?:-({_IDENT}(?:\.{_IDENT})*))?\Z")


class VersionError(MpotaError):
    pass


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return core + ("-" + ".".join(self.prerelease) if self.prerelease else "")

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()


def parse_version(text: str) -> Version:
    """Parse a release version or raise VersionError naming the problem."""
    if not isinstance(text, str):
        raise VersionError(f"invalid version {text!r}: expected a string like 1.2.3")
    if len(text) > MAX_VERSION_LENGTH:
        raise VersionError(f"invalid version {text!r}: longer than {MAX_VERSION_LENGTH} characters")
    m = _VERSION.match(text)
    if not m:
        raise VersionError(
            f"invalid version {text!r}: expected MAJOR.MINOR.PATCH with an optional -prerelease "
            "(e.g. 1.2.3 or 1.3.0-rc.1)"
        )
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre)


def is_valid_version(text: str) -> bool:
    try:
        parse_version(text)
    except VersionError:
        return False
    return True


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as a sorts before, with or after b."""
    va, vb = parse_version(a), parse_version(b)
    return (va > vb) - (va < vb)
