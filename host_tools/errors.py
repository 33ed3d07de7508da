"""The typed errors every host module raises; only the CLI turns them into words and exit codes."""

from __future__ import annotations


class MpotaError(Exception):
    """Root of every expected failure. str(error) is the one-line message the CLI prints."""

    exit_code = 1


class UsageError(MpotaError):
    """The command line itself is wrong (bad combination of options, unknown name)."""

    exit_code = 2
