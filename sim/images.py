"""Firmware for the simulated board: genuine app images (host_tools.imagebuild) carrying a behaviour.

A real build's bugs live in its code; the simulated board runs none of a firmware's code, so an
image tells the fakes how it behaves with a marker in its read-only data, ``MPOTA-SIM:<flags>;``
(flags ``k=v`` separated by commas, e.g. ``health=fail`` or ``crash=boot``), which
``esp32.sim_firmware()`` (sim/fakes/esp32.py) reads from the image's first 4 KiB.
"""

from __future__ import annotations

from typing import Any

from host_tools.imagebuild import build_app_image


def sim_marker(flags: str) -> bytes:
    """The rodata marker for ``flags`` (nothing for none)."""
    return f"MPOTA-SIM:{flags};".encode() if flags else b""


def build_sim_image(chip: str = "esp32", version: str = "", project_name: str = "", secure_version: int = 0,
                    *, flags: str = "", **kwargs: Any) -> bytes:
    """``build_app_image`` with the behaviour ``flags`` give this firmware on the simulated board."""
    return build_app_image(chip, version, project_name, secure_version, rodata=sim_marker(flags), **kwargs)
