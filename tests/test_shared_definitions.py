"""Concepts the host tools and the device both need, written once per side in the form each side
can run (MicroPython has no counted repeats in `re`, and the device never imports host_tools),
and held together here: the host's definition and the device's must agree.

- device group names: host_tools.fleet.GROUP_NAME and mpota.config.group_ok;
- where the device keeps its state (the NVS namespace, blob key and read buffer; the state file
  beside the config) as `mpota deploy`'s probe reads it, and the config's size cap;
- the size caps on the signed documents (host_tools.manifest and mpota.config);
- the chips an image header names: host_tools.esp_image.CHIP_NAMES, mpota.imagehdr.CHIPS and the
  copy of its names in mpota.trust (which cannot afford to import imagehdr);
- the report events the device sends are the ones the server takes, and the `failed` reasons the
  server excuses are reason codes the device sends.
"""

from __future__ import annotations

import re
from pathlib import Path

import mpota.config as device_config
import mpota.state as device_state
import pytest

from host_tools import deploy, manifest
from host_tools.fleet import DEFAULT_GROUP, GROUP_NAME
from host_tools.server.ingest import EVENTS
from host_tools.server.ingest_plan import EXCUSED_REASONS
from host_tools.server.plans import DEFAULT_GROUPS, default_stage_tables

DEVICE = Path(__file__).resolve().parent.parent / "device" / "mpota"

GROUP_CASES = [
    "general", "canary", "a", "A9", "9a", "eu-west.1_b", "x" * 32,                   # names
    "", "x" * 33, ".hidden", "_x", "-x", "a b", "a/b", "a:b", "a\n", "ä", "grüppe",  # not names
    "a\u00a0", "\u0661", "a*", "a+b", "a..b", "a--", "Z_", "a\t",
]


def test_chip_ids_are_one_table_on_host_and_device() -> None:
    import mpota.imagehdr as device_imagehdr
    import mpota.trust as device_trust

    from host_tools.esp_image import CHIP_NAMES

    assert device_imagehdr.CHIPS == CHIP_NAMES
    assert sorted(device_trust._CHIPS) == sorted(CHIP_NAMES.values())


@pytest.mark.parametrize("name", GROUP_CASES)
def test_group_names_are_one_rule_on_host_and_device(name: str) -> None:
    assert device_config.group_ok(name) == bool(GROUP_NAME.fullmatch(name)), name


def test_default_groups_are_group_names_and_the_default_plan() -> None:
    assert all(GROUP_NAME.fullmatch(g) for g in DEFAULT_GROUPS) and DEFAULT_GROUPS[-1] == DEFAULT_GROUP
    assert [s["name"] for s in default_stage_tables()] == list(DEFAULT_GROUPS)
    base = {"device_id": "d", "board": "b", "feed_url": "http://x/",
            "keys": {"release": ["04" + "00" * 64], "rollout": ["04" + "00" * 64]}}
    assert device_config.Config(dict(base), "/mpota.json").group == DEFAULT_GROUP


def test_state_location_and_config_cap_match_the_device() -> None:
    assert (deploy.STATE_NVS_NAMESPACE, deploy.STATE_NVS_KEY) == (device_state._NS, device_state._KEY)
    assert deploy.STATE_MAX == device_state._MAX
    assert deploy.STATE_FILE == device_state._FILE
    assert deploy.CONFIG_MAX == device_config.CONFIG_MAX
    assert deploy.CONFIG_PATH == "/mpota.json"  # mpota.config.load's default path
    assert f"NVS({deploy.STATE_NVS_NAMESPACE!r}).get_blob({deploy.STATE_NVS_KEY!r}" in deploy.PROBE_SCRIPT


def test_document_size_caps_match_the_device() -> None:
    assert manifest.MAX_CHANNEL_BYTES == device_config.CHANNEL_MAX
    assert manifest.MAX_MANIFEST_BYTES == device_config.MANIFEST_MAX


def _device_sources() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DEVICE.glob("*.py")))


def test_the_server_takes_every_event_the_device_sends() -> None:
    sent = set(re.findall(r'(?:\bevent|_report)\(\s*"([a-z_]+)"', _device_sources()))
    assert {"checking", "downloading", "installed", "confirmed", "rolled_back", "heartbeat"} <= sent
    assert sent <= EVENTS, sent - EVENTS


def test_excused_reasons_are_reasons_the_device_sends() -> None:
    src = _device_sources()
    codes = set(re.findall(r'Error\(\s*"([a-z_]+)"', src))  # the errors' report codes
    codes |= set(re.findall(r'reason="([a-z_]+)"', src))
    assert {"hash_mismatch", "pending", "interrupted"} <= codes
    assert EXCUSED_REASONS <= codes, EXCUSED_REASONS - codes
