"""The trust conformance corpus (tests/vectors/trust/corpus.json, made by make_corpus.py there):
the host rules (host_tools/trust.py over host_tools.dsse/channel/manifest) and the device core
(device/mpota/dsse.py + p256.py + trust.py, run under CPython and the MicroPython unix port) must
each reach every case's expected verdict -- and so agree with each other on every case."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from host_tools import trust
from host_tools.errors import MpotaError
from host_tools.keydoc import KeysDoc
from host_tools.keys import PublicKey
from sim.deviceproc import import_path_env, interpreter_cmd

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "tests" / "vectors" / "trust"
CORPUS = HERE / "corpus.json"
DATA: dict[str, Any] = json.loads(CORPUS.read_text())
CASES: list[dict[str, Any]] = DATA["cases"]
KEYS_CASES: list[dict[str, Any]] = DATA["keys_cases"]
VERDICTS = {"offer", "none", "malformed", "bad_signature", "unknown_key", "payload_type", "too_large",
            "wrong_target", "replayed", "expired", "manifest_mismatch", "security_version", "not_newer",
            "too_big"}


def host_verdict(case: dict[str, Any]) -> str:
    d = case["device"]
    now = None if d["now"] is None else datetime.strptime(d["now"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc)
    dev = trust.DeviceView(
        board=d["board"], channel=d["channel"], device_id=d["device_id"], group=d["group"],
        rollout_keys=[PublicKey(bytes.fromhex(h)) for h in DATA["keys"]["rollout"]],
        release_keys=[PublicKey(bytes.fromhex(h)) for h in DATA["keys"]["release"]],
        rollout_threshold=d["rollout_threshold"], release_threshold=d["release_threshold"],
        seen_seq=d["seen_seq"], floor=d["floor"], running=d["running"], chip=d["chip"],
        slot_size=d["slot_size"], now=now)
    try:
        ch = trust.check_channel(case["channel"].encode(), dev)
        if not trust.wanted(ch, dev):
            return "none"
        trust.check_manifest(case["manifest"].encode(), ch, dev)
        return "offer"
    except MpotaError as e:
        code = getattr(e, "code", None)
        assert isinstance(code, str), f"{type(e).__name__} has no report code: {e}"
        return code


def host_keys_verdict(case: dict[str, Any]) -> str:
    t = case["trusted"]
    trusted = (KeysDoc.legacy(t["legacy"]["release"], t["legacy"]["rollout"]) if "legacy" in t
               else KeysDoc.from_dict(t))
    try:
        for text in case["chain"]:
            trusted = trust.check_keys(text.encode(), trusted)
    except MpotaError as e:
        code = getattr(e, "code", None)
        assert isinstance(code, str), f"{type(e).__name__} has no report code: {e}"
        return code
    return f"v{trusted.version}"


def test_corpus_is_what_make_corpus_writes() -> None:
    # every case is reproducible from its recipe (fixed keys, deterministic signatures)
    spec = importlib.util.spec_from_file_location("make_corpus", HERE / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    make_corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_corpus)
    assert make_corpus.render() == CORPUS.read_text()


def test_corpus_covers_what_it_must() -> None:
    assert len(CASES) >= 60
    got = {c["expect"] for c in CASES}
    assert got == VERDICTS, got ^ VERDICTS
    assert all(c["made"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_host_rules(case: dict[str, Any]) -> None:
    assert host_verdict(case) == case["expect"], case["made"]


def test_keys_corpus_covers_what_it_must() -> None:
    got = {c["expect"] for c in KEYS_CASES}
    want = {"v1", "v2", "v4", "replayed", "malformed", "bad_signature", "unknown_key", "wrong_target",
            "too_large", "payload_type"}
    assert got == want, got ^ want
    assert all(c["made"] for c in KEYS_CASES)


@pytest.mark.parametrize("case", KEYS_CASES, ids=[c["name"] for c in KEYS_CASES])
def test_host_keys_rule(case: dict[str, Any]) -> None:
    assert host_keys_verdict(case) == case["expect"], case["made"]


def test_device_core(interp: str) -> None:
    args = [str(HERE / "device_runner.py"), str(CORPUS)]
    p = subprocess.run(interpreter_cmd(interp, "8M") + args, capture_output=True, text=True, timeout=240,
                       env=import_path_env(interp))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    got = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    every = CASES + KEYS_CASES
    wrong = {c["name"]: (got.get(c["name"]), c["expect"]) for c in every if got.get(c["name"]) != c["expect"]}
    assert wrong == {}, f"device ({interp}) verdict != expected: {wrong}"
    # and the host agrees with this interpreter's verdict on every case
    host = {c["name"]: host_verdict(c) for c in CASES}
    host.update({c["name"]: host_keys_verdict(c) for c in KEYS_CASES})
    assert {n: (got[n], h) for n, h in host.items() if got[n] != h} == {}
