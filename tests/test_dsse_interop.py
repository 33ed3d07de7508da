"""Standard DSSE: securesystemslib (the reference Python DSSE implementation, as in-toto and TUF use
it) verifies mpota's envelopes, and mpota -- host tools and the device verifier -- verifies
envelopes securesystemslib signed, with mpota's keyid and without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from host_tools import dsse
from host_tools.keys import PrivateKey, generate_key, load_private_key

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = b'{"_type":"release","spec":1,"version":"1.2.3"}'


@pytest.fixture()
def key(tmp_path: Path) -> PrivateKey:
    info = generate_key(tmp_path / "release.pem", "release")
    return load_private_key(info.path)


def _sslib_key(key: PrivateKey, keyid: str | None = None) -> SSlibKey:
    """The same public key as securesystemslib sees it, under mpota's keyid."""
    return SSlibKey(key.keyid if keyid is None else keyid, "ecdsa", "ecdsa-sha2-nistp256",
                    {"public": key.public.to_pem().decode()})


def _sslib_signer(key: PrivateKey, keyid: str) -> CryptoSigner:
    priv = serialization.load_pem_private_key(key.to_pem(), password=None)
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    return CryptoSigner(priv, _sslib_key(key, keyid))


def _device_verify(data: bytes, key: PrivateKey) -> bytes:
    from mpota import dsse as ddsse

    return bytes(ddsse.verify(data, dsse.RELEASE_PAYLOAD_TYPE, [(key.keyid, key.public.point)]))


def test_securesystemslib_verifies_mpota_envelopes(key: PrivateKey, tmp_path: Path) -> None:
    env = dsse.sign_envelope(dsse.RELEASE_PAYLOAD_TYPE, PAYLOAD, key)
    parsed = Envelope.from_dict(json.loads(dsse.envelope_bytes(env)))
    accepted = parsed.verify([_sslib_key(key)], 1)
    assert list(accepted) == [key.keyid]
    assert parsed.payload == PAYLOAD and parsed.payload_type == dsse.RELEASE_PAYLOAD_TYPE
    # a changed payload fails there too (the test can fail)
    parsed.payload = PAYLOAD.replace(b"1.2.3", b"9.9.9")
    with pytest.raises(VerificationError):
        parsed.verify([_sslib_key(key)], 1)
    # and another key does not verify it
    other = load_private_key(generate_key(tmp_path / "other.pem", "release").path)
    with pytest.raises(VerificationError):
        Envelope.from_dict(env).verify([_sslib_key(other, key.keyid)], 1)


@pytest.mark.parametrize("keyid", ["mpota", ""])
def test_mpota_verifies_securesystemslib_envelopes(key: PrivateKey, keyid: str) -> None:
    signer = _sslib_signer(key, key.keyid if keyid == "mpota" else "")
    env = Envelope(PAYLOAD, dsse.RELEASE_PAYLOAD_TYPE, {})
    env.sign(signer)
    doc = env.to_dict()
    assert doc["signatures"][0]["keyid"] == (key.keyid if keyid else "")
    data = json.dumps(doc).encode()
    # host tools
    assert dsse.verify_envelope(json.loads(data), dsse.RELEASE_PAYLOAD_TYPE, key.public) == PAYLOAD
    # the device verifier (pure-Python P-256, DER signature as securesystemslib wrote it)
    assert _device_verify(data, key) == PAYLOAD
    # tampered: both refuse
    bad = dict(doc, payload=Envelope(b"{}", "x", {}).to_dict()["payload"])
    with pytest.raises(dsse.SignatureError):
        dsse.verify_envelope(bad, dsse.RELEASE_PAYLOAD_TYPE, key.public)
    from mpota.errors import MetadataError

    with pytest.raises(MetadataError) as e:
        _device_verify(json.dumps(bad).encode(), key)
    assert e.value.code == "bad_signature"
