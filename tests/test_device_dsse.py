"""device/mpota/dsse.py, table-driven: envelopes made by the host tools (host_tools.dsse, real
P-256 keys), verified by the device code with the real pure-Python P-256 under CPython and the
MicroPython unix port. Also the size cap enforced while reading."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from host_tools import dsse as hdsse
from sim.deviceproc import import_path_env, interpreter_cmd
from sim.feedkit import Keys

REL = hdsse.RELEASE_PAYLOAD_TYPE
CHAN = hdsse.CHANNEL_PAYLOAD_TYPE


def _env(keys: Keys, payload: bytes, names: list[str], ptype: str = REL) -> dict[str, Any]:
    return hdsse.sign_envelope(ptype, payload, [keys.keys[n] for n in names])


def _b(env: dict[str, Any]) -> str:
    return json.dumps(env)


def cases(keys: Keys) -> list[tuple[str, str, str, str, str]]:
    """(name, envelope text, payloadType wanted, role, expected: 'ok' or error class)."""
    p = json.dumps({"_type": "release", "version": "1.2.3"}).encode()
    good = _env(keys, p, ["release"])
    two = _env(keys, p, ["stranger", "release"])
    bad = _env(keys, p, ["release"])
    sig = bytearray(base64.b64decode(bad["signatures"][0]["sig"]))
    sig[0] ^= 0x80
    bad["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    short = json.loads(json.dumps(good))
    short["signatures"][0]["sig"] = base64.b64encode(bytes(sig[:63])).decode()
    notb64 = json.loads(json.dumps(good))
    notb64["signatures"][0]["sig"] = "!!!not base64!!!"
    dup = {**good, "signatures": bad["signatures"] + good["signatures"]}
    tampered = {**good, "payload": base64.b64encode(p.replace(b"1.2.3", b"9.9.9")).decode()}
    many = {**good, "signatures": good["signatures"] * 9}
    def resig(env: dict[str, Any], fn: Any, **extra: Any) -> str:
        e = json.loads(json.dumps(env))
        e["signatures"][0]["sig"] = fn(base64.b64decode(e["signatures"][0]["sig"]))
        e["signatures"][0].update(extra)
        return _b(e)

    from ecdsa import NIST256p
    from ecdsa.util import sigdecode_der, sigencode_string

    def raw(der: bytes) -> str:
        n = NIST256p.order
        return base64.b64encode(sigencode_string(*sigdecode_der(der, n), n)).decode()

    def urlsafe(der: bytes) -> str:
        return base64.urlsafe_b64encode(der).decode()

    nokeyid = json.loads(json.dumps(good))
    del nokeyid["signatures"][0]["keyid"]
    out = [
        ("valid", _b(good), REL, "release", "ok"),
        ("raw_p1363_sig", resig(good, raw), REL, "release", "ok"),
        ("urlsafe_sig", resig(good, urlsafe), REL, "release", "ok"),
        ("no_keyid", _b(nokeyid), REL, "release", "ok"),
        ("empty_keyid", resig(good, lambda d: base64.b64encode(d).decode(), keyid=""), REL, "release", "ok"),
        ("no_keyid_wrong_role", _b(nokeyid), REL, "rollout", "bad_signature"),
        ("keyid_not_str", resig(good, lambda d: base64.b64encode(d).decode(), keyid=5), REL, "release",
         "malformed"),
        ("unknown_then_valid", _b(two), REL, "release", "ok"),
        ("bad_sig", _b(bad), REL, "release", "bad_signature"),
        ("tampered_payload", _b(tampered), REL, "release", "bad_signature"),
        ("short_sig", _b(short), REL, "release", "bad_signature"),
        ("sig_not_base64", _b(notb64), REL, "release", "bad_signature"),
        ("sig_not_str", resig(good, lambda d: 5), REL, "release", "malformed"),
        ("bad_then_good_same_key", _b(dup), REL, "release", "ok"),
        ("stranger_only", _b(_env(keys, p, ["stranger"])), REL, "release", "unknown_key"),
        ("wrong_role", _b(good), REL, "rollout", "unknown_key"),
        ("no_signatures", _b({**good, "signatures": []}), REL, "release", "malformed"),
        ("payload_type", _b(_env(keys, p, ["release"], CHAN)), REL, "release", "payload_type"),
        ("not_json", "{\"payloadType\": ", REL, "release", "malformed"),
        ("array", "[1, 2]", REL, "release", "malformed"),
        ("no_payload_type", _b({"payload": good["payload"], "signatures": []}), REL, "release",
         "malformed"),
        ("sigs_not_list", _b({**good, "signatures": {}}), REL, "release", "malformed"),
        ("payload_not_b64", _b({**good, "payload": "***"}), REL, "release", "malformed"),
        ("payload_not_str", _b({**good, "payload": 5}), REL, "release", "malformed"),
        ("payload_stray_chars", _b({**good, "payload": good["payload"][:-4] + "*" + good["payload"][-3:]}),
         REL, "release", "malformed"),
        ("too_many_sigs", _b(many), REL, "release", "malformed"),
        ("sig_entry_not_obj", _b({**good, "signatures": ["x"]}), REL, "release", "malformed"),
    ]
    return out


SCRIPT = r"""
import sys, json
import mpota.dsse as dsse
import mpota.errors as errors
import mpota.http as http
import mpota.config as config
with open(%(data)r) as f:
    d = json.load(f)
cfg = config.Config({"device_id": "d", "board": "b", "feed_url": "http://x/", "keys": d["keys"]},
                    "/x/mpota.json")
res = {}
for name, text, ptype, role, _ in d["cases"]:
    try:
        payload = dsse.verify(text.encode(), ptype, cfg.keys[role])
        doc = dsse.parse(payload, "release")
        res[name] = "ok" if doc["version"] == "1.2.3" else "wrong payload"
    except errors.OTAError as e:
        res[name] = e.code
for name, payload in (("parse_not_json", b"{x"), ("parse_wrong_type", b'{"_type": "channel"}'),
                      ("parse_list", b"[]")):
    try:
        dsse.parse(payload, "release")
        res[name] = "ok"
    except errors.OTAError as e:
        res[name] = e.code

class Resp:
    def __init__(self, total, length):
        self.left = total
        self.length = length
        self.read = 0
    def readinto(self, buf):
        n = min(len(buf), self.left)
        for i in range(n):
            buf[i] = 0x20
        self.left -= n
        self.read += n
        return n

for name, total, length, cap in (("cap_exact", 8192, None, 8192), ("cap_over_stream", 10 ** 6, None, 8192),
                                 ("cap_over_length", 10 ** 6, 10 ** 6, 8192), ("cap_small", 100, 100, 8192)):
    r = Resp(total, length)
    try:
        out = http.read_capped(r, cap)
        res[name] = ["ok", len(out), r.read]
    except errors.OTAError as e:
        res[name] = [e.code, 0, r.read]
print("RESULT " + json.dumps(res))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str, str, str, str]]]:
    tmp = tmp_path_factory.mktemp("dsse")
    keys = Keys(tmp / "keys")
    cs = cases(keys)
    path = tmp / "cases.json"
    path.write_text(json.dumps({"keys": keys.config_keys(), "cases": cs}))
    return path, cs


def test_dsse_table(interp: str, data: tuple[Path, list[Any]], tmp_path: Path) -> None:
    path, cs = data
    script = tmp_path / "dsse.py"
    script.write_text(SCRIPT % {"data": str(path)})
    p = subprocess.run(interpreter_cmd(interp, "256k") + [str(script)], capture_output=True, text=True,
                       timeout=120, env=import_path_env(interp))
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    for name, _, _, _, want in cs:
        assert res[name] == want, name
    assert res["parse_not_json"] == res["parse_wrong_type"] == res["parse_list"] == "malformed"
    assert res["cap_exact"] == ["ok", 8192, 8192]
    assert res["cap_over_stream"] == ["too_large", 0, 8193]  # never more than cap + 1
    assert res["cap_over_length"] == ["too_large", 0, 0]     # refused from Content-Length
    assert res["cap_small"] == ["ok", 100, 100]
