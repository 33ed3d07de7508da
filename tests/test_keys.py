"""Keys: generation, file modes, roles, every bad key file, and signatures checked by `ecdsa` directly."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import ecdsa
import pytest
from ecdsa.util import sigdecode_der, sigencode_string

from host_tools.keys import (
    KeyFileError,
    generate_key,
    keyid_of,
    load_private_key,
    load_public_key,
)


def test_generate_writes_private_0600_and_public(tmp_path: Path) -> None:
    info = generate_key(tmp_path / "rel", "release")
    assert stat.S_IMODE(os.stat(info.path).st_mode) == 0o600
    assert info.pub_path == tmp_path / "rel.pub" and info.pub_path.is_file()
    text = info.path.read_text()
    assert text.startswith("# mpota-role: release\n-----BEGIN EC PRIVATE KEY-----")
    assert "PRIVATE" not in info.pub_path.read_text()
    point = bytes.fromhex(info.public_hex)
    assert len(point) == 65 and point[0] == 4
    assert info.keyid == hashlib.sha256(point).hexdigest() == keyid_of(point)
    # The public PEM is standard: the ecdsa package reads it as is.
    vk = ecdsa.VerifyingKey.from_pem(info.pub_path.read_text())
    assert vk.to_string("uncompressed") == point
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel", "rel.pub"]  # no temp files left


def test_refuses_to_overwrite_either_file(tmp_path: Path) -> None:
    info = generate_key(tmp_path / "k", "release")
    before = info.path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(tmp_path / "k", "rollout")
    assert info.path.read_bytes() == before
    info.path.unlink()  # only the .pub left: still refused, nothing written
    with pytest.raises(KeyFileError, match=r"k\.pub already exists"):
        generate_key(tmp_path / "k", "release")
    assert not info.path.exists()


def test_unknown_role_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="unknown key role"):
        generate_key(tmp_path / "k", "admin")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeyFileError, match="cannot create the folder for key"):
        generate_key(tmp_path / "file" / "k", "release")
    generate_key(tmp_path / "new" / "k", "release")  # a missing folder is made, private
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


def test_sign_verifies_independently_with_ecdsa(tmp_path: Path) -> None:
    info = generate_key(tmp_path / "k", "both")
    key = load_private_key(info.path, "release")
    assert key.role == "both" and key.keyid == info.keyid and key.public_hex == info.public_hex
    msg = b"DSSEv1 4 test 5 hello"
    sig = key.sign(msg)
    assert sig[0] == 0x30 and sig[1] == len(sig) - 2  # ASN.1 DER
    vk = ecdsa.VerifyingKey.from_string(bytes.fromhex(info.public_hex), curve=ecdsa.NIST256p)
    assert vk.verify(sig, msg, hashfunc=hashlib.sha256, sigdecode=sigdecode_der)
    with pytest.raises(ecdsa.BadSignatureError):
        vk.verify(sig, msg + b"!", hashfunc=hashlib.sha256, sigdecode=sigdecode_der)
    pub = load_public_key(info.public_hex)
    assert pub.verify(msg, sig) and not pub.verify(msg, sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not pub.verify(msg, sig[:-1])
    # raw r||s (IEEE P1363) is read too; DER with a non-minimal length is not
    r, s = sigdecode_der(sig, ecdsa.NIST256p.order)
    raw = sigencode_string(r, s, ecdsa.NIST256p.order)
    assert len(raw) == 64 and pub.verify(msg, raw) and not pub.verify(msg + b"!", raw)
    long_form = b"\x30\x81" + bytes([len(sig) - 2]) + sig[2:]
    assert not pub.verify(msg, long_form)


def test_roles_enforced(tmp_path: Path) -> None:
    generate_key(tmp_path / "rel", "release")
    generate_key(tmp_path / "ro", "rollout")
    assert load_private_key(tmp_path / "rel", "release").role == "release"
    assert load_private_key(tmp_path / "ro", "rollout").role == "rollout"
    with pytest.raises(KeyFileError, match="is a rollout key; this step needs a release key"):
        load_private_key(tmp_path / "ro", "release")
    with pytest.raises(KeyFileError, match="is a release key; this step needs a rollout key"):
        load_private_key(tmp_path / "rel", "rollout")
    # A role-less key (e.g. openssl's) loads, but not where a role is required.
    body = (tmp_path / "rel").read_text().split("\n", 1)[1]
    (tmp_path / "plain").write_text(body)
    assert load_private_key(tmp_path / "plain").role is None
    with pytest.raises(KeyFileError, match="no mpota role line"):
        load_private_key(tmp_path / "plain", "release")
    (tmp_path / "odd").write_text("# mpota-role: admin\n" + body)
    with pytest.raises(KeyFileError, match="unknown role 'admin'"):
        load_private_key(tmp_path / "odd")


def _openssl(*args: str) -> bool:
    try:
        return subprocess.run(["openssl", *args], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_bad_key_files(tmp_path: Path) -> None:
    generate_key(tmp_path / "k", "release")
    p384 = ecdsa.SigningKey.generate(curve=ecdsa.NIST384p)
    (tmp_path / "p384.pem").write_bytes(b"# mpota-role: release\n" + p384.to_pem())
    k1 = ecdsa.SigningKey.generate(curve=ecdsa.SECP256k1)
    (tmp_path / "k1.pem").write_bytes(k1.to_pem())
    (tmp_path / "empty.pem").write_bytes(b"")
    (tmp_path / "garbage.pem").write_bytes(os.urandom(300))
    (tmp_path / "corrupt.pem").write_text(
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_bytes((tmp_path / "k").read_bytes())
    unreadable.chmod(0)
    cases = {
        "missing.pem": "cannot read key .*No such file",
        "p384.pem": "curve NIST384p; mpota keys are ECDSA P-256",
        "k1.pem": "curve SECP256k1",
        "k.pub": "only a public key",
        "empty.pem": "is empty",
        "garbage.pem": "not a PEM key file",
        "corrupt.pem": "not a valid EC private key",
    }
    cases["."] = "cannot read key .*it is a folder"
    if os.geteuid() != 0:  # root reads anything
        cases["unreadable.pem"] = "cannot read key .*Permission denied"
    for name, pattern in cases.items():
        with pytest.raises(KeyFileError, match=pattern):
            load_private_key(tmp_path / name)
    if _openssl("genrsa", "-out", str(tmp_path / "rsa.pem"), "2048"):
        with pytest.raises(KeyFileError, match="not a valid EC private key|no EC private key"):
            load_private_key(tmp_path / "rsa.pem")


def test_openssl_p256_key_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ossl.pem"
    if not _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)):
        # Without openssl, write the same PKCS#8 form with ecdsa.
        path.write_bytes(ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).to_pem(format="pkcs8"))
    key = load_private_key(path)
    assert key.role is None and key.public.verify(b"x", key.sign(b"x"))


def test_load_public_key_forms(tmp_path: Path) -> None:
    info = generate_key(tmp_path / "k", "rollout")
    by_pem = load_public_key(info.pub_path)
    by_priv = load_public_key(info.path)
    by_hex = load_public_key(info.public_hex)
    by_bytes = load_public_key(bytes.fromhex(info.public_hex))
    assert by_pem.keyid == by_priv.keyid == by_hex.keyid == by_bytes.keyid == info.keyid
    assert by_pem.point == bytes.fromhex(info.public_hex)
    with pytest.raises(KeyFileError, match="expected 130"):
        load_public_key(info.public_hex[:-2])
    off_curve = "04" + "00" * 63 + "01"
    with pytest.raises(KeyFileError, match="not on the P-256 curve"):
        load_public_key(off_curve)
    (tmp_path / "p384.pub").write_bytes(ecdsa.SigningKey.generate(curve=ecdsa.NIST384p)
                                        .get_verifying_key().to_pem())
    with pytest.raises(KeyFileError, match="curve NIST384p"):
        load_public_key(tmp_path / "p384.pub")
