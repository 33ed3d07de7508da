"""DSSE: PAE bytes, signing, verification verdicts, cross-checks with `ecdsa` and the device's p256."""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
from pathlib import Path

import ecdsa
import pytest
from ecdsa.util import sigdecode_der

from host_tools.dsse import (
    CHANNEL_PAYLOAD_TYPE,
    RELEASE_PAYLOAD_TYPE,
    EnvelopeFormatError,
    PayloadTypeError,
    SignatureError,
    envelope_bytes,
    pae,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from host_tools.keys import PrivateKey, generate_key, load_private_key

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[PrivateKey]:
    d = tmp_path_factory.mktemp("keys")
    out = []
    for i, role in enumerate(("release", "release", "rollout")):
        generate_key(d / f"k{i}", role)
        out.append(load_private_key(d / f"k{i}"))
    return out


def test_pae_matches_the_dsse_spec() -> None:
    # The example from the DSSE protocol document.
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("", b"") == b"DSSEv1 0  0 "
    # Lengths are byte lengths, not character counts.
    assert pae("t\u00e9", "\u00e9".encode()) == b"DSSEv1 3 t\xc3\xa9 2 \xc3\xa9"


def test_envelope_shape_and_independent_verification(keys: list[PrivateKey]) -> None:
    payload = b'{"_type":"release","version":"1.2.3"}'
    env = sign_envelope(RELEASE_PAYLOAD_TYPE, payload, keys[0])
    assert set(env) == {"payloadType", "payload", "signatures"}
    assert env["payloadType"] == RELEASE_PAYLOAD_TYPE
    assert base64.b64decode(env["payload"]) == payload
    (entry,) = env["signatures"]
    assert entry["keyid"] == hashlib.sha256(keys[0].public.point).hexdigest()
    sig = base64.b64decode(entry["sig"])
    assert sig[0] == 0x30 and len(sig) in range(8, 73)  # ASN.1 DER, as every DSSE tool expects
    # Verified with the ecdsa package alone, over PAE built here by hand.
    message = b"DSSEv1 %d %s %d %s" % (len(RELEASE_PAYLOAD_TYPE), RELEASE_PAYLOAD_TYPE.encode(), len(payload),
                                      payload)
    vk = ecdsa.VerifyingKey.from_string(keys[0].public.point, curve=ecdsa.NIST256p)
    assert vk.verify(sig, message, hashfunc=hashlib.sha256, sigdecode=sigdecode_der)
    # The file form round-trips.
    assert parse_envelope(envelope_bytes(env)) == env


def test_device_p256_accepts_host_signatures(keys: list[PrivateKey]) -> None:
    from mpota import p256  # the device's pure-Python verifier, run under CPython
    payload = b'{"_type":"channel","seq":3}'
    env = sign_envelope(CHANNEL_PAYLOAD_TYPE, payload, keys[2])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    message = pae(CHANNEL_PAYLOAD_TYPE, payload)
    raw = p256.decode_der_signature(sig)
    assert raw is not None
    assert p256.verify(keys[2].public.point, message, raw) is True
    assert p256.verify(keys[2].public.point, message + b" ", raw) is False
    assert p256.verify(keys[0].public.point, message, raw) is False
    digest = hashlib.sha256(message).digest()
    assert p256.verify_any([(keys[2].public.point, sig)], digest)  # DER as the envelope carries it


def test_verify_returns_exact_payload(keys: list[PrivateKey]) -> None:
    payload = b'{"b": 1,  "a": 2}\n'  # not canonical on purpose: bytes come back untouched
    env = sign_envelope(RELEASE_PAYLOAD_TYPE, payload, keys[:2])
    assert len(env["signatures"]) == 2
    assert verify_envelope(env, RELEASE_PAYLOAD_TYPE, [k.public for k in keys]) == payload
    both = [keys[0].public, keys[1].public]
    assert verify_envelope(env, RELEASE_PAYLOAD_TYPE, both, threshold=2) == payload
    with pytest.raises(SignatureError, match="1 valid of 2"):
        env1 = sign_envelope(RELEASE_PAYLOAD_TYPE, payload, keys[0])
        env1["signatures"].append({"keyid": keys[1].keyid, "sig": env1["signatures"][0]["sig"]})
        verify_envelope(env1, RELEASE_PAYLOAD_TYPE, [keys[0].public, keys[1].public], threshold=2)


def _tampered(env: dict[str, object], how: str) -> dict[str, object]:
    e = copy.deepcopy(env)
    sigs = e["signatures"]
    assert isinstance(sigs, list)
    if how == "payload":
        e["payload"] = base64.b64encode(b'{"version":"9.9.9"}').decode()
    elif how == "sig-bit":
        raw = bytearray(base64.b64decode(sigs[0]["sig"]))
        raw[5] ^= 0x01
        sigs[0]["sig"] = base64.b64encode(bytes(raw)).decode()
    elif how == "sig-short":
        sigs[0]["sig"] = base64.b64encode(base64.b64decode(sigs[0]["sig"])[:63]).decode()
    elif how == "sig-zero":
        sigs[0]["sig"] = base64.b64encode(b"\0" * 64).decode()
    elif how == "sig-not-b64":
        sigs[0]["sig"] = "***"
    return e


@pytest.mark.parametrize("how", ["payload", "sig-bit", "sig-short", "sig-zero", "sig-not-b64"])
def test_tampering_is_refused(keys: list[PrivateKey], how: str) -> None:
    env = sign_envelope(RELEASE_PAYLOAD_TYPE, b'{"version":"1.0.0"}', keys[0])
    with pytest.raises(SignatureError, match="bad signature"):
        verify_envelope(_tampered(env, how), RELEASE_PAYLOAD_TYPE, [keys[0].public])


def test_wrong_payload_type_and_wrong_key(keys: list[PrivateKey]) -> None:
    env = sign_envelope(CHANNEL_PAYLOAD_TYPE, b"{}", keys[2])
    with pytest.raises(PayloadTypeError, match="expected 'application/vnd.mpota.release\\+json'"):
        verify_envelope(env, RELEASE_PAYLOAD_TYPE, [keys[2].public])
    # Relabelled payloadType: the signature covered the type, so it fails too.
    relabelled = dict(env, payloadType=RELEASE_PAYLOAD_TYPE)
    with pytest.raises(SignatureError):
        verify_envelope(relabelled, RELEASE_PAYLOAD_TYPE, [keys[2].public])
    with pytest.raises(SignatureError, match="not signed by any of the given keys"):
        verify_envelope(env, CHANNEL_PAYLOAD_TYPE, [keys[0].public])
    with pytest.raises(SignatureError, match="no public key"):
        verify_envelope(env, CHANNEL_PAYLOAD_TYPE, [])


def test_unknown_keyids_are_ignored(keys: list[PrivateKey]) -> None:
    env = sign_envelope(RELEASE_PAYLOAD_TYPE, b"{}", [keys[1], keys[0]])
    assert verify_envelope(env, RELEASE_PAYLOAD_TYPE, [keys[0].public]) == b"{}"


@pytest.mark.parametrize("doc, pattern", [
    (b"not json", "not JSON"),
    (b"[]", "expected a JSON object"),
    (b'{"payload": "", "signatures": []}', "needs payloadType and signatures"),
    (b'{"payloadType": "t", "payload": "@@", "signatures": [{"sig": ""}]}', "payload is not valid base64"),
    (b'{"payloadType": "t", "payload": "", "signatures": []}', "0 signatures"),
    (b'{"payloadType": "t", "payload": "", "signatures": ["x"]}', "signature 0 must be an object"),
])
def test_malformed_envelopes(doc: bytes, pattern: str) -> None:
    with pytest.raises(EnvelopeFormatError, match=pattern):
        parse_envelope(doc)


def test_signing_is_deterministic_and_files_are_small(keys: list[PrivateKey]) -> None:
    a = sign_envelope(RELEASE_PAYLOAD_TYPE, b"x" * 100, keys[0])
    b = sign_envelope(RELEASE_PAYLOAD_TYPE, b"x" * 100, keys[0])
    assert a == b  # RFC 6979
    assert json.loads(envelope_bytes(a)) == a


@pytest.mark.parametrize("text", ["YWJj\n", "YWJjZA=\n", "YW-jZA=\n", "YWJj\nZA==", "YW-j\n"])
def test_base64_with_a_newline_is_refused(text: str) -> None:
    # "$" in a pattern also matches before a final newline: the host must refuse what the device does
    from host_tools.dsse import b64decode
    with pytest.raises((ValueError, binascii.Error)):
        b64decode(text)
