"""Writes corpus.json, the trust conformance corpus: every case is a signed channel document, the
manifest it pins, what the device knows, and the verdict both the host rules (host_tools/trust.py)
and the device core (device/mpota/trust.py) must reach. Run: python tests/vectors/trust/make_corpus.py

Keys are fixed test keys (secret exponents below: never use them for anything else) and ECDSA
signing is deterministic (RFC 6979), so this script always writes the same file; a test checks the
committed corpus.json is exactly its output. Each case says how it was made ("made").

Verdicts: "offer" (the device would install this release), "none" (nothing to do: not in the
rollout, paused, outside the window, up to date) or the report reason code of the refusal.

"keys_cases": a trusted keys document (or {"legacy": bare key lists}, the version-0 trust) and a chain
of next keys documents the board checks one after the other (host_tools.trust.check_keys,
device/mpota/keydoc.py step); verdict "v<N>" (all taken, N trusted now) or the refusal's code.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

from ecdsa import NIST256p, SigningKey  # noqa: E402
from ecdsa.util import sigdecode_der, sigencode_string  # noqa: E402

from host_tools.dsse import CHANNEL_PAYLOAD_TYPE, RELEASE_PAYLOAD_TYPE, pae  # noqa: E402
from host_tools.keydoc import KEYS_PAYLOAD_TYPE  # noqa: E402
from host_tools.keys import PrivateKey  # noqa: E402
from host_tools.manifest import payload_bytes  # noqa: E402
from host_tools.server.bucket import bucket  # noqa: E402

SECRETS = {"release": 0x5EED01, "rollout": 0x5EED02, "stranger": 0x5EED03, "release2": 0x5EED04,
           "rollout2": 0x5EED05, "rootA": 0x5EED11, "rootB": 0x5EED12, "rootC": 0x5EED13,
           "rootD": 0x5EED14, "rootE": 0x5EED15}
KEYS = {n: PrivateKey(SigningKey.from_secret_exponent(e, curve=NIST256p), n) for n, e in SECRETS.items()}
BOARD = "esp32-generic-4mb"
NOW = "2026-12-01T12:00:00Z"
RID = "r-2026-12"
DEVICE = {"board": BOARD, "channel": "stable", "group": "general", "device_id": "dev-0001",
          "seen_seq": 5, "floor": 1, "running": "1.0.0", "chip": "esp32", "slot_size": 0x1F0000,
          "now": NOW, "release_threshold": 1, "rollout_threshold": 1}
IMG_HASH = "sha256:" + hashlib.sha256(b"image").hexdigest()
ZIMG_HASH = "sha256:" + hashlib.sha256(b"zlib stream").hexdigest()


def base_channel() -> dict[str, Any]:
    return {"_type": "channel", "spec": 1, "board": BOARD, "channel": "stable", "seq": 7,
            "expires": "2026-12-08T00:00:00Z",
            "release": {"version": "1.1.0", "manifest": f"releases/{BOARD}/1.1.0/manifest.json",
                        "manifest_sha256": "0" * 64},
            "rollout": {"id": RID, "state": "active", "groups": [], "percentage": 100.0, "window": None}}


def base_manifest() -> dict[str, Any]:
    return {"_type": "release", "spec": 1, "version": "1.1.0", "build_id": "20261201-1200",
            "security_version": 1, "target_hardware": [BOARD], "chip": "esp32",
            "min_bootloader_version": None,
            "image": {"url": "firmware.bin", "size": 1500000, "hash": IMG_HASH, "encoding": "none",
                      "transfer_size": 1500000, "transfer_hash": IMG_HASH},
            "metadata": {"release_notes": "", "required": False},
            "created": "2026-12-01T00:00:00Z", "expires": None}


BASE_HASH = "sha256:" + hashlib.sha256(b"running image").hexdigest()
BASE2_HASH = "sha256:" + hashlib.sha256(b"older image").hexdigest()
DELTA_HASH = "sha256:" + hashlib.sha256(b"patch").hexdigest()


def delta(**edits: Any) -> dict[str, Any]:
    """An image.deltas[] entry; DEL as a value removes that field."""
    d: dict[str, Any] = {"base_size": 1400000, "base_hash": BASE_HASH, "url": "delta-from-1.0.0.patch.z",
                         "size": 150000, "hash": DELTA_HASH, "encoding": "detools-zlib", "window_bits": 10}
    for k, v in edits.items():
        if v is DEL:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def deltas(*entries: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["image"]["deltas"] = [copy.deepcopy(e) for e in entries]
    return edit


def _h(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def app(*files: tuple[str, int], **edits: Any) -> dict[str, Any]:
    """An app{} bundle of (path, size) files, size = their sum; edits override fields."""
    fs = [{"path": p, "size": n, "hash": _h(p.encode())} for p, n in files or (("main.py", 10),
                                                                             ("lib/util.py", 20))]
    d: dict[str, Any] = {"root": "/app", "url": "app.bin", "size": sum(f["size"] for f in fs),
                         "hash": _h(b"bundle"), "files": fs}
    d.update(edits)
    return d


def with_app(bundle: dict[str, Any] | None, image: bool = True) -> Callable[[dict[str, Any]], None]:
    """Edit: add app (None: null), and without image drop the firmware image."""
    def edit(d: dict[str, Any]) -> None:
        d["app"] = copy.deepcopy(bundle)
        if not image:
            del d["image"]
    return edit


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def sign(ptype: str, payload: bytes, names: tuple[str, ...] = ("release",)) -> dict[str, Any]:
    sigs = [{"keyid": KEYS[n].keyid, "sig": b64(KEYS[n].sign(pae(ptype, payload)))} for n in names]
    return {"payloadType": ptype, "payload": b64(payload), "signatures": sigs}


def text(env: Any) -> str:
    return env if isinstance(env, str) else json.dumps(env, indent=2) + "\n"


def raw_sig(der_b64: str) -> bytes:
    n = NIST256p.order
    return bytes(sigencode_string(*sigdecode_der(base64.b64decode(der_b64), n), n))


class Case:
    """A case: start from the good channel/manifest/device, apply the edits, sign, then apply the
    envelope edits. `pin` False: the channel pins the manifest as first signed (before menv)."""

    def __init__(self, name: str, made: str, expect: str, *, ch: Callable[[dict[str, Any]], Any] | None = None,
                 m: Callable[[dict[str, Any]], Any] | None = None, dev: dict[str, Any] | None = None,
                 cenv: Callable[[dict[str, Any]], Any] | None = None,
                 menv: Callable[[dict[str, Any]], Any] | None = None,
                 csign: tuple[str, ...] = ("rollout",), msign: tuple[str, ...] = ("release",),
                 cptype: str = CHANNEL_PAYLOAD_TYPE, mptype: str = RELEASE_PAYLOAD_TYPE, pin: bool = True):
        self.name, self.made, self.expect = name, made, expect
        self.ch, self.m, self.dev, self.cenv, self.menv = ch, m, dev or {}, cenv, menv
        self.csign, self.msign, self.cptype, self.mptype, self.pin = csign, msign, cptype, mptype, pin

    def build(self) -> dict[str, Any]:
        m = base_manifest()
        if self.m:
            self.m(m)
        menv = sign(self.mptype, payload_bytes(m), self.msign)
        first = text(menv)
        if self.menv:
            r = self.menv(menv)  # None: edited in place; else the replacement envelope
            menv = menv if r is None else r
        mtext = text(menv)
        ch = base_channel()
        ch["release"]["manifest_sha256"] = hashlib.sha256((mtext if self.pin else first).encode()).hexdigest()
        if self.ch:
            self.ch(ch)
        cenv = sign(self.cptype, payload_bytes(ch), self.csign)
        if self.cenv:
            r = self.cenv(cenv)
            cenv = cenv if r is None else r
        return {"name": self.name, "made": self.made, "expect": self.expect,
                "device": {**DEVICE, **self.dev}, "channel": text(cenv), "manifest": mtext}


def setp(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Edit: set (or with value DEL, delete) a dotted path."""
    def edit(d: dict[str, Any]) -> None:
        *head, last = path.split(".")
        for k in head:
            d = d[k]
        if value is DEL:
            del d[last]
        else:
            d[last] = copy.deepcopy(value)
    return edit


DEL = object()


def both(*edits: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        for e in edits:
            e(d)
    return edit


def sig0(fn: Callable[[str], Any]) -> Callable[[dict[str, Any]], None]:
    def edit(env: dict[str, Any]) -> None:
        env["signatures"][0]["sig"] = fn(env["signatures"][0]["sig"])
    return edit


def sig_unset(field: str) -> Callable[[dict[str, Any]], None]:
    def edit(env: dict[str, Any]) -> None:
        del env["signatures"][0][field]
    return edit


def der_edit(fn: Callable[[bytes], bytes]) -> Callable[[dict[str, Any]], None]:
    return sig0(lambda s: b64(fn(base64.b64decode(s))))


def flip(b: bytes) -> bytes:
    out = bytearray(b)
    out[10] ^= 1
    return bytes(out)


NOTE = ">>>???>>>???>>>???"  # its base64 (in any alignment) has both '+' and '/'


def mixed(s: str) -> str:
    # one URL-safe character in a standard-alphabet string that has '+' or '/'
    assert "+" in s and "/" in s, s
    return s.replace("A", "-", 1) if "A" in s else s.replace("B", "_", 1)


def cases() -> list[Case]:
    b = bucket(RID, DEVICE["device_id"])
    assert 0 < b < 99.9
    C = Case
    good = C("ok_baseline", "the good channel and manifest, signed with DER signatures by the right keys",
             "offer")
    return [
        good,
        # --- signatures and keyids
        C("sig_raw_p1363", "channel signature re-encoded as raw 64-byte r||s", "offer",
          cenv=sig0(lambda s: b64(raw_sig(s)))),
        C("manifest_sig_raw_p1363", "manifest signature re-encoded as raw r||s", "offer",
          menv=sig0(lambda s: b64(raw_sig(s)))),
        C("sig_urlsafe", "channel signature and payload (with a note field whose base64 has '+' and '/') "
          "in URL-safe base64", "offer", ch=setp("note", NOTE),
          cenv=lambda e: {**e, "payload": e["payload"].replace("+", "-").replace("/", "_"),
                          "signatures": [{**e["signatures"][0], "sig": base64.urlsafe_b64encode(
                              base64.b64decode(e["signatures"][0]["sig"])).decode()}]}),
        C("no_keyid", "keyid removed from the channel signature (DSSE makes it optional)", "offer",
          cenv=sig_unset("keyid")),
        C("empty_keyid", "keyid set to \"\" (what sigstore writes)", "offer",
          cenv=lambda e: e["signatures"][0].update(keyid="")),
        C("no_keyid_manifest", "keyid removed from the manifest signature", "offer",
          menv=sig_unset("keyid")),
        C("keyid_other_key", "channel signed by a stranger key (its own keyid)", "unknown_key",
          csign=("stranger",)),
        C("channel_signed_by_release_key", "channel signed with the release key: wrong role", "unknown_key",
          csign=("release",)),
        C("manifest_signed_by_rollout_key", "manifest signed with the rollout key: wrong role", "unknown_key",
          msign=("rollout",)),
        C("no_keyid_wrong_key", "stranger's signature without keyid: tried with the rollout key, fails",
          "bad_signature", csign=("stranger",), cenv=sig_unset("keyid")),
        C("stranger_then_good", "a stranger's signature, then the rollout key's", "offer",
          csign=("stranger", "rollout")),
        C("bad_then_good", "a corrupted rollout signature, then a good one by the same key", "offer",
          cenv=lambda e: e.update(signatures=[{**e["signatures"][0], "sig": b64(flip(
              base64.b64decode(e["signatures"][0]["sig"])))}] + e["signatures"])),
        C("eight_signatures", "seven stranger signatures, then the rollout key's: 8 is the limit", "offer",
          csign=("stranger",) * 7 + ("rollout",)),
        C("nine_signatures", "eight stranger signatures and the rollout key's: more than 8", "malformed",
          csign=("stranger",) * 8 + ("rollout",)),
        C("no_signatures", "the signatures list emptied", "malformed", cenv=lambda e: e.update(signatures=[])),
        C("keyid_not_string", "keyid is a number", "malformed",
          cenv=lambda e: e["signatures"][0].update(keyid=5)),
        C("sig_missing", "the sig field removed", "malformed", cenv=sig_unset("sig")),
        C("sig_not_string", "sig is a list", "malformed", cenv=lambda e: e["signatures"][0].update(sig=[1])),
        C("signature_not_object", "a signature entry is a string", "malformed",
          cenv=lambda e: e.update(signatures=["MEUCIQ=="])),
        C("sig_bit_flipped", "one bit of the DER signature flipped", "bad_signature", cenv=der_edit(flip)),
        C("sig_der_long_form_length", "DER sequence length in long form (0x81 NN): not canonical DER",
          "bad_signature", cenv=der_edit(lambda d: b"\x30\x81" + d[1:2] + d[2:])),
        C("sig_der_trailing_byte", "a zero byte after the DER sequence (length adjusted)", "bad_signature",
          cenv=der_edit(lambda d: bytes([0x30, d[1] + 1]) + d[2:] + b"\x00")),
        C("sig_der_padded_integer", "r with an extra leading zero byte: not minimal", "bad_signature",
          cenv=der_edit(lambda d: bytes([0x30, d[1] + 1, 2, d[3] + 1, 0]) + d[4:])),
        C("sig_truncated", "the DER signature without its last byte", "bad_signature",
          cenv=der_edit(lambda d: d[:-1])),
        C("sig_not_base64", "sig is not base64", "bad_signature", cenv=sig0(lambda s: "***" + s[3:])),
        C("sig_unpadded", "sig base64 without its '=' padding (DER of 71 bytes needs one)", "bad_signature",
          cenv=sig0(lambda s: s.rstrip("=") if s.endswith("=") else s[:-1])),
        C("payload_tampered", "payload replaced after signing (version 9.9.9)", "bad_signature",
          cenv=lambda e: e.update(payload=b64(base64.b64decode(e["payload"]).replace(b"1.1.0", b"9.9.9")))),
        C("payload_type_wrong", "channel signed and labelled with the release payloadType",
          "payload_type", cptype=RELEASE_PAYLOAD_TYPE),
        C("payload_type_relabelled", "payloadType changed after signing", "payload_type",
          cenv=lambda e: e.update(payloadType="application/json")),
        C("payload_unpadded", "payload base64 with its '=' padding stripped", "malformed",
          ch=setp("rollout.id", "r-2026-12x"), cenv=lambda e: e.update(payload=e["payload"].rstrip("="))),
        C("payload_mixed_alphabets", "payload with '+' or '/' and a URL-safe '-' or '_' too", "malformed",
          ch=setp("note", NOTE), cenv=lambda e: e.update(payload=mixed(e["payload"]))),
        C("payload_padding_inside", "'==' inserted in the middle of the payload base64", "malformed",
          cenv=lambda e: e.update(payload=e["payload"][:8] + "AA==" + e["payload"][8:])),
        C("payload_stray_character", "a '*' in the payload base64 (length kept)", "malformed",
          cenv=lambda e: e.update(payload="*" + e["payload"][1:])),
        C("envelope_not_json", "the channel file is not JSON", "malformed", cenv=lambda e: '{"payloadType": '),
        C("envelope_array", "the channel file is a JSON array", "malformed", cenv=lambda e: "[1, 2]\n"),
        C("payload_not_json", "signed payload that is not JSON", "malformed",
          cenv=lambda e: sign(CHANNEL_PAYLOAD_TYPE, b"{not json", ("rollout",))),
        C("payload_wrong_type", "signed channel payload with _type release", "malformed",
          ch=setp("_type", "release")),
        C("spec_2", "spec 2 (a format this device does not read)", "malformed", ch=setp("spec", 2)),
        C("channel_too_large", "a 9000-character extra field: over the 8192-byte channel cap", "too_large",
          ch=setp("padding", "x" * 9000)),
        C("unknown_field_kept", "an unknown extra field (newer writers): ignored", "offer",
          ch=setp("future", {"x": 1})),
        # --- channel fields
        C("board_other", "channel for another board", "wrong_target", ch=setp("board", "esp32s3-generic-8mb")),
        C("channel_other", "channel document of channel beta", "wrong_target", ch=setp("channel", "beta")),
        C("channel_missing", "the channel field removed", "malformed", ch=setp("channel", DEL)),
        C("board_bad_name", "board 'bad board!' (not a name)", "malformed", ch=setp("board", "bad board!")),
        C("board_trailing_newline", "board with a trailing newline (was accepted by the host)", "malformed",
          ch=setp("board", BOARD + "\n")),
        C("seq_zero", "seq 0", "malformed", ch=setp("seq", 0)),
        C("seq_bool", "seq true", "malformed", ch=setp("seq", True)),
        C("seq_float", "seq 7.0", "malformed", ch=setp("seq", 7.0)),
        C("seq_below_seen", "seq 4, the device has seen 5 (a replayed old document)", "replayed",
          ch=setp("seq", 4)),
        C("seq_equal_seen", "seq 5, equal to the seen 5 (the same document again)", "offer",
          ch=setp("seq", 5)),
        C("channel_keys_version_named", "keys_version 3 (the feed's keys document version)", "offer",
          ch=setp("keys_version", 3)),
        C("channel_keys_version_null", "keys_version null", "offer", ch=setp("keys_version", None)),
        C("channel_keys_version_string", "keys_version '3'", "malformed", ch=setp("keys_version", "3")),
        C("channel_keys_version_negative", "keys_version -1", "malformed", ch=setp("keys_version", -1)),
        C("channel_keys_version_bool", "keys_version true", "malformed", ch=setp("keys_version", True)),
        C("channel_keys_version_too_big", "keys_version 2**31", "malformed", ch=setp("keys_version", 2**31)),
        C("expires_past", "expired one second before now", "expired", ch=setp("expires", "2026-12-01T11:59:59Z")),
        C("expires_now", "expires exactly now", "expired", ch=setp("expires", NOW)),
        C("expires_next_second", "expires one second after now", "offer",
          ch=setp("expires", "2026-12-01T12:00:01Z")),
        C("expires_past_clock_unset", "expired, but the device's clock is not set", "offer",
          ch=setp("expires", "2020-01-01T00:00:00Z"), dev={"now": None}),
        C("expires_none", "expires null (no expiry)", "offer", ch=setp("expires", None)),
        C("expires_date_only", "expires '2026-12-08' (no time)", "malformed", ch=setp("expires", "2026-12-08")),
        C("expires_feb_30", "expires on 30 February", "malformed", ch=setp("expires", "2027-02-30T00:00:00Z")),
        C("expires_leap_day", "expires 29 February 2028 (a leap year)", "offer",
          ch=setp("expires", "2028-02-29T00:00:00Z")),
        C("expires_fullwidth_digits", "expires with full-width Unicode digits", "malformed",
          ch=setp("expires", "\uff12026-12-08T00:00:00Z")),
        C("release_missing", "the release object removed", "malformed", ch=setp("release", DEL)),
        C("release_version_short", "release version '1.1'", "malformed", ch=setp("release.version", "1.1")),
        C("release_version_leading_zero", "release version '1.01.0'", "malformed",
          ch=setp("release.version", "1.01.0")),
        C("release_manifest_dotdot", "manifest path with '..'", "malformed",
          ch=setp("release.manifest", "releases/../../etc/manifest.json")),
        C("release_manifest_absolute", "manifest path starting with '/'", "malformed",
          ch=setp("release.manifest", "/manifest.json")),
        C("release_sha256_upper", "manifest_sha256 in upper-case hex", "malformed",
          ch=lambda c: c["release"].update(manifest_sha256=c["release"]["manifest_sha256"].upper())),
        C("rollout_missing", "the rollout object removed", "malformed", ch=setp("rollout", DEL)),
        C("rollout_id_empty", "rollout id ''", "malformed", ch=setp("rollout.id", "")),
        C("rollout_state_bogus", "rollout state 'running'", "malformed", ch=setp("rollout.state", "running")),
        C("rollout_paused", "rollout paused", "none", ch=setp("rollout.state", "paused")),
        C("rollout_halted", "rollout halted", "none", ch=setp("rollout.state", "halted")),
        C("groups_string", "groups 'general' (a string; the host once read it as letters)", "malformed",
          ch=setp("rollout.groups", "general")),
        C("group_listed_pct0", "percentage 0 but the device's group is listed", "offer",
          ch=both(setp("rollout.groups", ["canary", "general"]), setp("rollout.percentage", 0))),
        C("pct0_not_in_group", "percentage 0, group not listed", "none", ch=setp("rollout.percentage", 0)),
        C("bucket_just_inside", f"percentage = the device's bucket ({b}) + 0.01", "offer",
          ch=setp("rollout.percentage", round(b + 0.01, 2))),
        C("bucket_edge_equal", f"percentage = the device's bucket ({b}): not below it", "none",
          ch=setp("rollout.percentage", b)),
        C("percentage_default", "percentage absent: 100", "offer", ch=setp("rollout.percentage", DEL)),
        C("percentage_over_100", "percentage 100.5", "malformed", ch=setp("rollout.percentage", 100.5)),
        C("percentage_bool", "percentage true", "malformed", ch=setp("rollout.percentage", True)),
        C("window_outside", "window 13:00-14:00, now 12:00", "none",
          ch=setp("rollout.window", {"start": "13:00", "end": "14:00"})),
        C("window_inside", "window 11:30-12:30, now 12:00", "offer",
          ch=setp("rollout.window", {"start": "11:30", "end": "12:30"})),
        C("window_end_exclusive", "window 11:00-12:00 ends at now (exclusive)", "none",
          ch=setp("rollout.window", {"start": "11:00", "end": "12:00"})),
        C("window_wraps_midnight", "window 11:00-01:00 wraps past midnight; now 12:00 inside", "offer",
          ch=setp("rollout.window", {"start": "11:00", "end": "01:00"})),
        C("window_clock_unset", "outside the window, clock not set: not enforced", "offer",
          ch=setp("rollout.window", {"start": "13:00", "end": "14:00"}), dev={"now": None}),
        C("window_bad_hour", "window start 24:00", "malformed",
          ch=setp("rollout.window", {"start": "24:00", "end": "01:00"})),
        C("window_extra_key", "window with a third key", "malformed",
          ch=setp("rollout.window", {"start": "01:00", "end": "02:00", "tz": "CET"})),
        C("up_to_date", "the device runs 1.1.0 already", "none", dev={"running": "1.1.0"}),
        C("up_to_date_v_prefix", "the device runs 'v1.1.0' (ESP-IDF style app_desc)", "none",
          dev={"running": "v1.1.0"}),
        # --- the manifest
        C("pin_mismatch", "manifest changed (re-signed) after the channel pinned it", "manifest_mismatch",
          menv=lambda e: sign(RELEASE_PAYLOAD_TYPE, payload_bytes({**base_manifest(), "build_id": "other"})),
          pin=False),
        C("manifest_version_differs", "manifest says 1.2.0, channel says 1.1.0", "manifest_mismatch",
          m=setp("version", "1.2.0")),
        C("manifest_too_large", "release notes padding the manifest over 16384 bytes (in an extra field)",
          "too_large", m=setp("padding", "x" * 17000)),
        C("target_other_board", "target_hardware lists another board", "wrong_target",
          m=setp("target_hardware", ["esp32s3-generic-8mb"])),
        C("target_empty", "target_hardware []", "malformed", m=setp("target_hardware", [])),
        C("chip_other", "chip esp32s3 on an esp32", "wrong_target", m=setp("chip", "esp32s3")),
        C("chip_unknown_name", "chip 'esp8266' (not an ESP32 chip)", "malformed", m=setp("chip", "esp8266")),
        C("chip_unknown_on_device", "chip esp32s3, the device does not know its chip", "offer",
          m=setp("chip", "esp32s3"), dev={"chip": None}),
        C("security_below_floor", "security_version 0, floor 1", "security_version",
          m=setp("security_version", 0)),
        C("security_equal_floor", "security_version 1, floor 1", "offer", m=setp("security_version", 1)),
        C("security_bool", "security_version true", "malformed", m=setp("security_version", True)),
        C("security_negative", "security_version -1", "malformed", m=setp("security_version", -1)),
        C("not_newer", "release 1.1.0, device runs 1.2.0", "not_newer", dev={"running": "1.2.0"}),
        C("downgrade_allowed", "metadata.allow_downgrade true, device runs 1.2.0", "offer",
          m=setp("metadata.allow_downgrade", True), dev={"running": "1.2.0"}),
        C("downgrade_top_level_ignored", "allow_downgrade at the top level (not where the host writes "
          "it): ignored (was accepted by the device)", "not_newer", m=setp("allow_downgrade", True),
          dev={"running": "1.2.0"}),
        C("downgrade_flag_string", "metadata.allow_downgrade 'yes'", "malformed",
          m=setp("metadata.allow_downgrade", "yes"), dev={"running": "1.2.0"}),
        C("prerelease_running", "device runs 1.1.0-rc.1, the release 1.1.0 is newer", "offer",
          dev={"running": "1.1.0-rc.1"}),
        C("running_unknown", "the device does not know its running version", "offer", dev={"running": None}),
        C("image_too_big", "image.size one byte over the slot", "too_big",
          m=both(setp("image.size", 0x1F0001), setp("image.transfer_size", 0x1F0001))),
        C("image_fits_exactly", "image.size equal to the slot", "offer",
          m=both(setp("image.size", 0x1F0000), setp("image.transfer_size", 0x1F0000))),
        C("zlib_transfer_growth_limit", "zlib transfer_size = size + size/64 + 1024 (the limit)", "offer",
          m=lambda d: d["image"].update(encoding="zlib", window_bits=10, transfer_hash=ZIMG_HASH,
                                        transfer_size=1500000 + 1500000 // 64 + 1024)),
        C("zlib_transfer_too_big", "zlib transfer_size one byte over the limit", "too_big",
          m=lambda d: d["image"].update(encoding="zlib", window_bits=10, transfer_hash=ZIMG_HASH,
                                        transfer_size=1500000 + 1500000 // 64 + 1025)),
        C("zlib_no_window_bits", "zlib without window_bits", "malformed",
          m=lambda d: d["image"].update(encoding="zlib", transfer_hash=ZIMG_HASH, transfer_size=800000)),
        C("zlib_window_8", "zlib window_bits 8", "malformed",
          m=lambda d: d["image"].update(encoding="zlib", window_bits=8, transfer_hash=ZIMG_HASH,
                                        transfer_size=800000)),
        C("zlib_no_transfer_hash", "zlib without transfer_hash", "malformed",
          m=lambda d: (d["image"].update(encoding="zlib", window_bits=10, transfer_size=800000),
                       d["image"].pop("transfer_hash"))),
        C("none_with_window_bits", "encoding none with window_bits", "malformed", m=setp("image.window_bits", 10)),
        C("none_transfer_differs", "encoding none, transfer_size differs from size", "malformed",
          m=setp("image.transfer_size", 1000)),
        C("none_transfer_null", "encoding none, transfer_size and transfer_hash null (default to size/hash)",
          "offer", m=both(setp("image.transfer_size", None), setp("image.transfer_hash", None))),
        C("encoding_unknown", "encoding 'gzip'", "malformed", m=setp("image.encoding", "gzip")),
        C("hash_upper_case", "image.hash in upper-case hex", "malformed",
          m=setp("image.hash", IMG_HASH.upper().replace("SHA256", "sha256"))),
        C("hash_other_algorithm", "image.hash 'sha512:...'", "malformed",
          m=setp("image.hash", "sha512:" + "0" * 64)),
        C("size_zero", "image.size 0", "malformed",
          m=both(setp("image.size", 0), setp("image.transfer_size", 0))),
        C("url_with_space", "image.url with a space", "malformed", m=setp("image.url", "firm ware.bin")),
        C("delta_offered", "one detools-zlib patch from the running image", "offer",
          m=deltas(delta())),
        C("delta_two_bases", "two patches from two bases, raw and zlib", "offer",
          m=deltas(delta(), delta(base_hash=BASE2_HASH, encoding="detools", window_bits=DEL))),
        C("delta_empty_list", "image.deltas empty", "offer", m=deltas()),
        C("delta_not_a_list", "image.deltas an object", "malformed", m=setp("image.deltas", delta())),
        C("delta_nine", "nine patches (cap 8)", "malformed",
          m=deltas(*[delta(base_hash="sha256:" + hashlib.sha256(bytes([i])).hexdigest()) for i in range(9)])),
        C("delta_eight", "eight patches (the cap)", "offer",
          m=deltas(*[delta(base_hash="sha256:" + hashlib.sha256(bytes([i])).hexdigest()) for i in range(8)])),
        C("delta_same_base_twice", "two patches for one base", "malformed", m=deltas(delta(), delta())),
        C("delta_from_itself", "a patch whose base is the new image", "malformed",
          m=deltas(delta(base_hash=IMG_HASH))),
        C("delta_no_base_hash", "patch without base_hash", "malformed", m=deltas(delta(base_hash=DEL))),
        C("delta_base_size_zero", "patch base_size 0", "malformed", m=deltas(delta(base_size=0))),
        C("delta_base_size_bool", "patch base_size true", "malformed", m=deltas(delta(base_size=True))),
        C("delta_bad_hash", "patch hash in upper-case hex", "malformed",
          m=deltas(delta(hash=DELTA_HASH.upper().replace("SHA256", "sha256")))),
        C("delta_url_space", "patch url with a space", "malformed", m=deltas(delta(url="a b.patch"))),
        C("delta_url_missing", "patch without url", "malformed", m=deltas(delta(url=DEL))),
        C("delta_encoding_heatshrink", "patch encoding 'detools-heatshrink' (not applied by devices)",
          "malformed", m=deltas(delta(encoding="detools-heatshrink"))),
        C("delta_no_encoding", "patch without encoding", "malformed", m=deltas(delta(encoding=DEL))),
        C("delta_zlib_no_window", "detools-zlib patch without window_bits", "malformed",
          m=deltas(delta(window_bits=DEL))),
        C("delta_raw_with_window", "detools patch with window_bits", "malformed",
          m=deltas(delta(encoding="detools"))),
        C("delta_window_16", "patch window_bits 16", "malformed", m=deltas(delta(window_bits=16))),
        C("delta_size_limit", "patch size = image size + size/64 + 1024 (the limit)", "offer",
          m=deltas(delta(size=1500000 + 1500000 // 64 + 1024))),
        C("delta_too_big", "patch size one byte over the limit", "too_big",
          m=deltas(delta(size=1500000 + 1500000 // 64 + 1025))),
        C("delta_size_over_u32", "patch size 2**32", "malformed", m=deltas(delta(size=2**32))),
        # --- application bundle (app{})
        C("app_with_firmware", "firmware image and an app bundle of two files", "offer", m=with_app(app())),
        C("app_only", "an app bundle and no firmware image (an app-only release)", "offer",
          m=with_app(app(), image=False)),
        C("app_only_image_null", "app bundle, image null", "offer",
          m=both(with_app(app()), setp("image", None))),
        C("app_null_firmware", "app null beside a firmware image (a firmware-only release)", "offer",
          m=with_app(None)),
        C("no_image_no_app", "neither image nor app", "malformed", m=setp("image", DEL)),
        C("app_null_no_image", "app null and no image", "malformed", m=with_app(None, image=False)),
        C("app_only_not_newer", "app-only release not newer than the running version", "not_newer",
          m=with_app(app(), image=False), dev={"running": "1.2.0"}),
        C("app_path_dotdot", "file path ../boot.py (escapes the root)", "malformed",
          m=with_app(app(("../boot.py", 5)))),
        C("app_path_inner_dotdot", "file path lib/../../boot.py", "malformed",
          m=with_app(app(("lib/../../boot.py", 5)))),
        C("app_path_absolute", "file path /boot.py", "malformed", m=with_app(app(("/boot.py", 5)))),
        C("app_path_dot", "file path ./main.py", "malformed", m=with_app(app(("./main.py", 5)))),
        C("app_path_hidden", "file path .hidden (leading dot)", "malformed", m=with_app(app((".hidden", 5)))),
        C("app_path_backslash", "file path ..\\boot.py", "malformed", m=with_app(app(("..\\boot.py", 5)))),
        C("app_path_empty_segment", "file path lib//x.py", "malformed", m=with_app(app(("lib//x.py", 5)))),
        C("app_path_trailing_slash", "file path lib/", "malformed", m=with_app(app(("lib/", 5)))),
        C("app_path_not_ascii", "file path m\u00e4in.py", "malformed", m=with_app(app(("m\u00e4in.py", 5)))),
        C("app_path_depth_4", "file path a/b/c/d.py (the depth limit)", "offer",
          m=with_app(app(("a/b/c/d.py", 5)))),
        C("app_path_depth_5", "file path a/b/c/d/e.py (one too deep)", "malformed",
          m=with_app(app(("a/b/c/d/e.py", 5)))),
        C("app_path_too_long", "a path of 129 characters", "malformed",
          m=with_app(app(("a" * 64 + "/" + "b" * 64, 5)))),
        C("app_path_segment_65", "a path segment of 65 characters", "malformed",
          m=with_app(app(("a" * 65, 5)))),
        C("app_path_twice", "main.py listed twice", "malformed", m=with_app(app(("main.py", 5), ("main.py", 5)))),
        C("app_file_and_folder", "lib as a file and lib/x.py", "malformed",
          m=with_app(app(("lib", 5), ("lib/x.py", 5)))),
        C("app_folder_then_file", "lib/x.py, then lib as a file", "malformed",
          m=with_app(app(("lib/x.py", 5), ("lib", 5)))),
        C("app_root_slash", "root /", "malformed", m=with_app(app(root="/"))),
        C("app_root_relative", "root app (not absolute)", "malformed", m=with_app(app(root="app"))),
        C("app_root_nested", "root /app/lib", "malformed", m=with_app(app(root="/app/lib"))),
        C("app_root_dotdot", "root /..", "malformed", m=with_app(app(root="/.."))),
        C("app_root_33", "root of 33 characters", "malformed", m=with_app(app(root="/" + "r" * 33))),
        C("app_size_not_sum", "app.size one more than the files' sum", "malformed",
          m=with_app(app(size=31))),
        C("app_file_limit", "a file of 262144 bytes (the per-file cap)", "offer",
          m=with_app(app(("big.bin", 262144)))),
        C("app_file_too_big", "a file of 262145 bytes", "malformed", m=with_app(app(("big.bin", 262145)))),
        C("app_total_limit", "four files of 262144 bytes: 1 MiB (the bundle cap)", "offer",
          m=with_app(app(*[(f"f{i}.bin", 262144) for i in range(4)]))),
        C("app_total_too_big", "four files of 262144 bytes and one more byte", "malformed",
          m=with_app(app(*[(f"f{i}.bin", 262144) for i in range(4)], ("g.bin", 1)))),
        C("app_64_files", "64 files (the cap)", "offer", m=with_app(app(*[(f"m{i}.py", 1) for i in range(64)]))),
        C("app_65_files", "65 files", "malformed", m=with_app(app(*[(f"m{i}.py", 1) for i in range(65)]))),
        C("app_no_files", "app.files empty", "malformed", m=with_app(app(files=[], size=0))),
        C("app_empty_file", "a file of 0 bytes", "offer", m=with_app(app(("empty.py", 0)))),
        C("app_size_bool", "a file size true", "malformed",
          m=with_app(app(files=[{"path": "a.py", "size": True, "hash": _h(b"a")}], size=1))),
        C("app_file_hash_upper", "a file hash in upper-case hex", "malformed",
          m=with_app(app(files=[{"path": "a.py", "size": 1, "hash": _h(b"a").upper().replace("SHA", "sha")}],
                         size=1))),
        C("app_file_no_hash", "a file without hash", "malformed",
          m=with_app(app(files=[{"path": "a.py", "size": 1}], size=1))),
        C("app_url_space", "app.url with a space", "malformed", m=with_app(app(url="app .bin"))),
        C("app_not_object", "app a list", "malformed", m=setp("app", [1])),
        C("created_missing", "created removed", "malformed", m=setp("created", DEL)),
        C("expires_before_created", "manifest expires before it was created", "malformed",
          m=setp("expires", "2026-11-30T00:00:00Z")),
        C("manifest_expired", "manifest expired an hour ago", "expired", m=setp("expires", "2026-12-01T11:00:00Z")),
        C("build_id_space", "build_id with a space", "malformed", m=setp("build_id", "build 1")),
        C("build_id_newline", "build_id with a trailing newline (was accepted by the host)", "malformed",
          m=setp("build_id", "b1\n")),
        C("release_notes_too_long", "release notes of 4097 characters", "malformed",
          m=setp("metadata.release_notes", "n" * 4097)),
        C("metadata_required_string", "metadata.required 'no'", "malformed", m=setp("metadata.required", "no")),
        C("min_bootloader_not_string", "min_bootloader_version 5", "malformed",
          m=setp("min_bootloader_version", 5)),
        C("manifest_spec_missing", "manifest without spec", "malformed", m=setp("spec", DEL)),
        C("manifest_payload_type_channel", "manifest labelled and signed as a channel document",
          "payload_type", mptype=CHANNEL_PAYLOAD_TYPE),
        C("manifest_bad_signature", "manifest signature bit flipped (the pin covers the edited file)",
          "bad_signature", menv=der_edit(flip)),
        # --- release thresholds (the keys document's release role: 2 of 2)
        C("release_threshold_met", "release threshold 2, signed by both release keys", "offer",
          msign=("release", "release2"), dev={"release_threshold": 2}),
        C("release_threshold_one_short", "release threshold 2, signed by one release key", "bad_signature",
          dev={"release_threshold": 2}),
        C("release_threshold_same_key_twice", "release threshold 2, two signatures by the same key",
          "bad_signature", msign=("release", "release"), dev={"release_threshold": 2}),
        C("release_threshold_same_key_no_keyid", "release threshold 2, the same key's signature twice "
          "without keyids (each tried with every key)", "bad_signature", msign=("release", "release"),
          dev={"release_threshold": 2},
          menv=lambda e: e.update(signatures=[{"sig": s["sig"]} for s in e["signatures"]])),
        C("release_threshold_two_without_keyid", "release threshold 2, both release keys' signatures "
          "without keyids", "offer", msign=("release", "release2"), dev={"release_threshold": 2},
          menv=lambda e: e.update(signatures=[{"sig": s["sig"]} for s in e["signatures"]])),
        C("release_threshold_with_stranger", "release threshold 2, a release key and a stranger",
          "bad_signature", msign=("release", "stranger"), dev={"release_threshold": 2}),
        C("rollout_threshold_two", "rollout threshold 2 and a channel signed by one rollout key",
          "bad_signature", dev={"rollout_threshold": 2}),
    ]


# --- the keys document: a trusted version and a chain of next versions the board walks
FLEET = "acme-prod"


def hexkey(name: str) -> str:
    return KEYS[name].public_hex


def role(t: int, *names: str) -> dict[str, Any]:
    return {"threshold": t, "keys": [hexkey(n) for n in names]}


def keys_doc(version: int, **roles: dict[str, Any]) -> dict[str, Any]:
    """Version `version` of the fleet's keys; roles not given: root A,B,C (2 of 3), release, rollout."""
    r = {"root": role(2, "rootA", "rootB", "rootC"), "release": role(1, "release"),
         "rollout": role(1, "rollout")}
    r.update(roles)
    return {"_type": "keys", "spec": 1, "fleet": FLEET, "version": version, "roles": r}


def signed_keys(doc: dict[str, Any], *names: str, ptype: str = KEYS_PAYLOAD_TYPE,
                env: Callable[[dict[str, Any]], Any] | None = None) -> str:
    e = sign(ptype, payload_bytes(doc), names)
    if env:
        r = env(e)
        e = e if r is None else r
    return text(e)


V1 = keys_doc(1)
LEGACY = {"legacy": {"release": [hexkey("release")], "rollout": [hexkey("rollout")]}}
NEW_ROOT = role(2, "rootD", "rootE")


def keys_cases() -> list[dict[str, Any]]:
    def k(name: str, made: str, expect: str, chain: list[str], trusted: dict[str, Any] | None = None
          ) -> dict[str, Any]:
        return {"name": name, "made": made, "expect": expect, "trusted": V1 if trusted is None else trusted,
                "chain": chain}

    ab = ("rootA", "rootB")
    v2 = keys_doc(2, rollout=role(1, "rollout2"))
    v2_root = keys_doc(2, root=NEW_ROOT)
    return [
        k("keys_next", "v2 (a new rollout key) signed by 2 of the 3 root keys", "v2", [signed_keys(v2, *ab)]),
        k("keys_all_root_sign", "v2 signed by all three root keys", "v2",
          [signed_keys(v2, "rootA", "rootB", "rootC")]),
        k("keys_older_version", "v1 offered to a board that trusts v2", "replayed",
          [signed_keys(V1, *ab)], trusted=v2),
        k("keys_same_version", "v1 again to a board that trusts v1", "replayed", [signed_keys(V1, *ab)]),
        k("keys_skips_a_version", "v3 where v2 is the next", "malformed",
          [signed_keys(keys_doc(3), *ab)]),
        k("keys_below_threshold", "v2 signed by one root key of the 2 needed", "bad_signature",
          [signed_keys(v2, "rootA")]),
        k("keys_same_key_twice", "v2 signed twice by the same root key", "bad_signature",
          [signed_keys(v2, "rootA", "rootA")]),
        k("keys_same_key_twice_no_keyid", "v2 signed twice by the same root key, keyids removed",
          "bad_signature", [signed_keys(v2, "rootA", "rootA", env=lambda e: e.update(
              signatures=[{"sig": s["sig"]} for s in e["signatures"]]))]),
        k("keys_root_and_stranger", "v2 signed by a root key and a stranger", "bad_signature",
          [signed_keys(v2, "rootA", "stranger")]),
        k("keys_signed_by_rollout_key", "v2 signed by the rollout and release keys (not root)",
          "unknown_key", [signed_keys(v2, "rollout", "release")]),
        k("keys_new_root_only", "v2 replaces the root keys (D,E 2 of 2), signed by the new root only",
          "unknown_key", [signed_keys(v2_root, "rootD", "rootE")]),
        k("keys_old_root_only", "v2 replaces the root keys, signed by the old root only", "unknown_key",
          [signed_keys(v2_root, *ab)]),
        k("keys_new_root_below_threshold", "v2 replaces the root keys, signed by 2 old and 1 of 2 new",
          "bad_signature", [signed_keys(v2_root, "rootA", "rootB", "rootD")]),
        k("keys_root_change", "v2 replaces the root keys, signed by 2 old and both new", "v2",
          [signed_keys(v2_root, "rootA", "rootB", "rootD", "rootE")]),
        k("keys_root_threshold_lowered", "v2 lowers the root threshold to 1, signed by 2 old keys", "v2",
          [signed_keys(keys_doc(2, root=role(1, "rootA", "rootB", "rootC")), *ab)]),
        k("keys_other_fleet", "v2 of fleet acme-staging signed by this fleet's root keys", "wrong_target",
          [signed_keys({**v2, "fleet": "acme-staging"}, *ab)]),
        k("keys_oversize", "v2 padded over 8192 bytes (an extra field)", "too_large",
          [signed_keys({**v2, "padding": "x" * 8000}, *ab)]),
        k("keys_payload_type_channel", "v2 signed and labelled as a channel document", "payload_type",
          [signed_keys(v2, *ab, ptype=CHANNEL_PAYLOAD_TYPE)]),
        k("keys_payload_type_relabelled", "payloadType changed after signing", "payload_type",
          [signed_keys(v2, *ab, env=lambda e: e.update(payloadType="application/json"))]),
        k("keys_payload_tampered", "the rollout key in the payload swapped after signing", "bad_signature",
          [signed_keys(v2, *ab, env=lambda e: e.update(payload=b64(payload_bytes(
              keys_doc(2, rollout=role(1, "stranger"))))))]),
        k("keys_not_json", "the keys file is not JSON", "malformed", ['{"payloadType": ']),
        k("keys_nine_signatures", "nine signatures", "malformed",
          [signed_keys(v2, *(("stranger",) * 7), *ab)]),
        k("keys_threshold_over_keys", "v2 with a release threshold of 2 over one key", "malformed",
          [signed_keys(keys_doc(2, release=role(2, "release")), *ab)]),
        k("keys_threshold_zero", "v2 with a rollout threshold of 0", "malformed",
          [signed_keys(keys_doc(2, rollout=role(0, "rollout")), *ab)]),
        k("keys_duplicate_key", "v2 listing a release key twice (2 of [k, k])", "malformed",
          [signed_keys(keys_doc(2, release=role(2, "release", "release")), *ab)]),
        k("keys_upper_case_hex", "v2 with a key in upper-case hex", "malformed",
          [signed_keys(keys_doc(2, rollout={"threshold": 1, "keys": [hexkey("rollout2").upper()]}), *ab)]),
        k("keys_compressed_point", "v2 with a key as a compressed point (02...)", "malformed",
          [signed_keys(keys_doc(2, rollout={"threshold": 1, "keys": ["02" + hexkey("rollout2")[2:66]]}),
                       *ab)]),
        k("keys_nine_keys", "v2 with nine rollout keys", "malformed",
          [signed_keys(keys_doc(2, rollout={"threshold": 1, "keys": [
              KEYS["rollout"].public_hex[:-2] + f"{i:02x}" for i in range(9)]}), *ab)]),
        k("keys_role_missing", "v2 without the rollout role", "malformed",
          [signed_keys({**v2, "roles": {r: v for r, v in v2["roles"].items() if r != "rollout"}}, *ab)]),
        k("keys_version_bool", "version true", "malformed", [signed_keys({**v2, "version": True}, *ab)]),
        k("keys_wrong_type", "_type 'root'", "malformed", [signed_keys({**v2, "_type": "root"}, *ab)]),
        k("keys_no_fleet", "v2 without a fleet", "malformed",
          [signed_keys({kk: v for kk, v in v2.items() if kk != "fleet"}, *ab)]),
        k("keys_extra_field", "v2 with an unknown field (ignored)", "v2",
          [signed_keys({**v2, "note": "rotated after the incident"}, *ab)]),
        k("keys_chain_of_three", "v2 (new rollout key), v3 (root A,D,E 2 of 3, signed A,B,D), v4 (new "
          "release key, signed D,E): a board that trusts v1 walks all three", "v4",
          [signed_keys(v2, *ab),
           signed_keys(keys_doc(3, rollout=role(1, "rollout2"), root=role(2, "rootA", "rootD", "rootE")),
                       "rootA", "rootB", "rootD"),
           signed_keys(keys_doc(4, rollout=role(1, "rollout2"), root=role(2, "rootA", "rootD", "rootE"),
                                release=role(1, "release2")), "rootD", "rootE")]),
        k("keys_chain_old_root_after_change", "v2 replaces the root keys; v3 signed by the old root",
          "unknown_key", [signed_keys(v2_root, "rootA", "rootB", "rootD", "rootE"),
                          signed_keys(keys_doc(3, root=NEW_ROOT), *ab)]),
        k("keys_chain_gap", "v2, then v4", "malformed", [signed_keys(v2, *ab), signed_keys(keys_doc(4), *ab)]),
        k("keys_from_legacy", "a board with bare key lists (version 0) takes v1 signed by its release key "
          "and 2 of the new root keys", "v1", [signed_keys(V1, "release", *ab)], trusted=LEGACY),
        k("keys_from_legacy_any_fleet", "the legacy trust has no fleet: v1 of any fleet", "v1",
          [signed_keys({**V1, "fleet": "other"}, "release", *ab)], trusted=LEGACY),
        k("keys_from_legacy_no_release_sig", "v1 signed by the new root keys only: the legacy board "
          "cannot tell them from a stranger's", "unknown_key", [signed_keys(V1, *ab)], trusted=LEGACY),
        k("keys_from_legacy_rollout_sig", "v1 signed by the legacy rollout key and the new root",
          "unknown_key", [signed_keys(V1, "rollout", *ab)], trusted=LEGACY),
        k("keys_from_legacy_v2", "v2 offered to a version-0 board", "malformed",
          [signed_keys(v2, "release", *ab)], trusted=LEGACY),
    ]


def build() -> dict[str, Any]:
    out = [c.build() for c in cases()]
    names = [c["name"] for c in out]
    assert len(set(names)) == len(names), "duplicate case names"
    keys = {"release": [KEYS["release"].public_hex, KEYS["release2"].public_hex],
            "rollout": [KEYS["rollout"].public_hex]}
    kc = keys_cases()
    names += [c["name"] for c in kc]
    assert len(set(names)) == len(names), "duplicate case names"
    return {"about": __doc__.split("\n\n")[0].replace("\n", " "), "keys": keys, "cases": out,
            "keys_cases": kc}


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=True) + "\n"


if __name__ == "__main__":
    (HERE / "corpus.json").write_text(render())
    print(f"wrote {HERE / 'corpus.json'}")
