"""Where the data that ships with mpota lives: board definitions and the device package.

A wheel (pip, pipx) carries them in host_tools/_data/ (setup.py copies them there); a source
checkout or an editable install uses the repository's own boards/, partitions.csv and device/.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_path(name: str) -> Path:
    """boards, device or partitions.csv: the installed copy when there is one, else the source tree's."""
    installed = _PACKAGE / "_data" / name
    if installed.exists():
        return installed
    return _PACKAGE.parent / name
