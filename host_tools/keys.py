"""ECDSA P-256 signing keys with roles (docs/FORMATS.md "Keys and signatures").

Files (written by ``generate_key``):
- ``PATH``: the private key, mode 0600, a role line then a standard SEC1 PEM block::

      # mpota-role: release
      -----BEGIN EC PRIVATE KEY-----
      ...

  OpenSSL and the ``ecdsa`` package both skip text before the PEM block, so the file stays
  usable by other tools. A key without the line (made by openssl) has no role: commands that
  check roles refuse it unless told to accept any role.
- ``PATH.pub``: the public key, a plain SubjectPublicKeyInfo PEM (no role line, so every tool reads it).

Roles: ``release`` signs release manifests (keep it offline), ``rollout`` signs channel documents
(lives on the server), ``both`` is the demo's single-key mode and passes either check, ``root``
signs the fleet's keys documents (`mpota keys`; offline, ideally one key per person).

keyid = hex SHA-256 of the 65-byte uncompressed public point; signatures are written in ASN.1 DER
(RFC 3279 ECDSA-Sig-Value, as every DSSE tool expects) and read in DER or raw r||s (64 bytes).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import MpotaError
from host_tools.fsutil import atomic_write

ROLES = ("release", "rollout", "both", "root")
ROLE_LINE_PREFIX = "# mpota-role:"
_ROLE_LINE = re.compile(r"^#\s*mpota-role:\s*(\S+)\s*$", re.MULTILINE)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_MAX_KEY_FILE = 64 * 1024


class KeyFileError(MpotaError):
    """A key file is missing, unreadable, malformed, of the wrong kind or of the wrong role."""


def _strict_der(sig: bytes) -> bool:
    """sig is exactly the canonical DER SEQUENCE { r INTEGER, s INTEGER } with r, s < 2^256
    (minimal lengths and integers, positive, nothing after): the rule the device applies
    (device/mpota/p256.py decode_der_signature), so both sides take the same signatures."""
    if len(sig) < 8 or sig[0] != 0x30 or sig[1] != len(sig) - 2 or sig[1] > 127:
        return False
    i = 2
    for _ in range(2):
        if i + 2 > len(sig) or sig[i] != 2:
            return False
        n = sig[i + 1]
        i += 2
        if n == 0 or n > 33 or i + n > len(sig):
            return False
        v = sig[i:i + n]
        i += n
        if v[0] & 0x80 or (n > 1 and v[0] == 0 and not v[1] & 0x80) or (n == 33 and v[0]):
            return False
    return i == len(sig)


def keyid_of(point: bytes) -> str:
    return hashlib.sha256(point).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    path: Path
    pub_path: Path
    role: str
    keyid: str
    public_hex: str


class PublicKey:
    """A P-256 public key: ``point`` is the 65-byte uncompressed point (0x04 || X || Y)."""

    def __init__(self, point: bytes, source: str = "") -> None:
        from ecdsa import NIST256p, VerifyingKey  # type: ignore[import-untyped]
        from ecdsa.errors import MalformedPointError  # type: ignore[import-untyped]

        if len(point) != 65 or point[0] != 4:
            raise KeyFileError(f"{source or 'public key'}: expected a 65-byte uncompressed P-256 point")
        try:
            self._vk = VerifyingKey.from_string(point, curve=NIST256p)
        except (MalformedPointError, ValueError, AssertionError):
            raise KeyFileError(f"{source or 'public key'}: the point is not on the P-256 curve") from None
        self.point = bytes(point)
        self.keyid = keyid_of(self.point)
        self.source = source

    @property
    def public_hex(self) -> str:
        return self.point.hex()

    def verify(self, data: bytes, sig: bytes) -> bool:
        """True when sig is a valid ECDSA-SHA256 signature of data: strict ASN.1 DER (what mpota,
        securesystemslib, in-toto and sigstore write) or raw r||s (64 bytes, IEEE P1363).

        A 64-byte string that also parses as DER is tried both ways, as on the device."""
        from ecdsa.util import sigdecode_der, sigdecode_string  # type: ignore[import-untyped]

        forms = []
        if _strict_der(sig):
            forms.append(sigdecode_der)
        if len(sig) == 64:
            forms.append(sigdecode_string)
        for decode in forms:
            try:
                if self._vk.verify(sig, data, hashfunc=hashlib.sha256, sigdecode=decode):
                    return True
            except Exception:  # ecdsa raises assorted errors on malformed input
                continue
        return False

    def to_pem(self) -> bytes:
        return bytes(self._vk.to_pem())

    def __repr__(self) -> str:
        return f"PublicKey(keyid={self.keyid[:16]}...)"


class PrivateKey:
    """A P-256 signing key with its role; ``sign(data)`` returns an ASN.1 DER ECDSA-Sig-Value."""

    def __init__(self, sk: object, role: str | None, path: str = "") -> None:
        from ecdsa import SigningKey

        assert isinstance(sk, SigningKey)
        self._sk = sk
        self.role = role
        self.path = path
        vk = sk.get_verifying_key()
        assert vk is not None
        self.public = PublicKey(bytes(vk.to_string("uncompressed")), path)
        self.keyid = self.public.keyid
        self.public_hex = self.public.public_hex

    def sign(self, data: bytes) -> bytes:
        from ecdsa.util import sigencode_der

        sig = self._sk.sign_deterministic(data, hashfunc=hashlib.sha256, sigencode=sigencode_der)
        return bytes(sig)

    def to_pem(self) -> bytes:
        return bytes(self._sk.to_pem())

    def __repr__(self) -> str:
        return f"PrivateKey(role={self.role}, keyid={self.keyid[:16]}...)"


# Backwards-friendly name used in the brief ("SigningKey wrapper").
SigningKey = PrivateKey


def check_role(role: str) -> str:
    if role not in ROLES:
        raise KeyFileError(f"unknown key role {role!r} (roles: {', '.join(ROLES)})")
    return role


def role_allows(role: str | None, wanted: str) -> bool:
    return role == wanted or role == "both"


def generate_key(path: str | os.PathLike[str], role: str = "release") -> KeyInfo:
    """Write a new key pair to PATH (private, 0600) and PATH.pub; never overwrite either file."""
    from ecdsa import NIST256p
    from ecdsa import SigningKey as _SK

    check_role(role)
    target = Path(path)
    pub = pub_path_for(target)
    for p in (target, pub):
        if p.exists() or p.is_symlink():
            raise KeyFileError(f"{p} already exists (refusing to overwrite a key; choose another path)")
    try:  # a new keys folder is private: the private key is the only thing that must stay there
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create the folder for key {target}: {exc.strerror or exc}") from None
    sk = _SK.generate(curve=NIST256p, hashfunc=hashlib.sha256)
    key = PrivateKey(sk, role, str(target))
    text = f"{ROLE_LINE_PREFIX} {role}\n".encode() + key.to_pem()
    try:
        atomic_write(target, text, mode=0o600)
        atomic_write(pub, key.public.to_pem(), mode=0o644)
    except OSError as exc:
        raise KeyFileError(f"cannot write key {target}: {exc.strerror or exc}") from None
    return KeyInfo(target, pub, role, key.keyid, key.public_hex)


def pub_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        if p.is_dir():
            raise KeyFileError(f"cannot read key {p}: it is a folder")
        with open(p, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key {p}: {exc.strerror or exc}") from None
    if not data.strip():
        raise KeyFileError(f"key file {p} is empty")
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{p} is not a key file (larger than {_MAX_KEY_FILE} bytes)")
    return data


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), m.group(0) + b"\n") for m in _PEM_BLOCK.finditer(data)]


def _curve_name(obj: object) -> str:
    curve = getattr(obj, "curve", None)
    return str(getattr(curve, "name", curve))


def read_role(data: bytes) -> str | None:
    m = _ROLE_LINE.search(data.decode("utf-8", "replace"))
    return m.group(1) if m else None


def load_private_key(path: str | os.PathLike[str], expect_role: str | None = None) -> PrivateKey:
    """Load a P-256 private key; with expect_role, refuse a key whose role is not it (or 'both')."""
    from ecdsa import NIST256p
    from ecdsa import SigningKey as _SK
    data = _read_key_file(path)
    blocks = _pem_blocks(data)
    if not blocks:
        raise KeyFileError(f"{path} is not a PEM key file")
    kinds = [k for k, _ in blocks]
    priv = [b for k, b in blocks if k in ("EC PRIVATE KEY", "PRIVATE KEY")]
    if not priv:
        if "PUBLIC KEY" in kinds:
            raise KeyFileError(f"{path} holds only a public key; signing needs the private key")
        raise KeyFileError(f"{path} holds no EC private key (found: {', '.join(kinds)})")
    try:
        sk = _SK.from_pem(priv[0], hashfunc=hashlib.sha256)
    except Exception:  # ecdsa raises assorted errors on corrupt DER or non-EC keys
        raise KeyFileError(f"{path} is not a valid EC private key (mpota keys are ECDSA P-256)") from None
    if sk.curve != NIST256p:
        raise KeyFileError(f"{path} is a key on curve {_curve_name(sk)}; "
                           "mpota keys are ECDSA P-256 (NIST256p)")
    role = read_role(data)
    if role is not None and role not in ROLES:
        raise KeyFileError(f"{path} has an unknown role {role!r} (roles: {', '.join(ROLES)})")
    if expect_role is not None:
        check_role(expect_role)
        if role is None:
            raise KeyFileError(
                f"{path} has no mpota role line (add '{ROLE_LINE_PREFIX} {expect_role}' before the PEM "
                "block, or accept any role explicitly)"
            )
        if not role_allows(role, expect_role):
            raise KeyFileError(f"{path} is a {role} key; this step needs a {expect_role} key "
                               "(or a 'both' key, or accept any role explicitly)")
    return PrivateKey(sk, role, str(path))


def load_public_key(path_or_hex: str | os.PathLike[str] | bytes) -> PublicKey:
    """A public key from a 65-byte point (bytes or 130 hex digits) or a PEM file (public or private)."""
    from ecdsa import NIST256p, VerifyingKey

    if isinstance(path_or_hex, bytes):
        return PublicKey(path_or_hex, "public key")
    text = str(path_or_hex)
    if re.fullmatch(r"(0x)?[0-9a-fA-F]{130}", text.strip()):
        return PublicKey(bytes.fromhex(text.strip().removeprefix("0x")), "public key hex")
    if re.fullmatch(r"[0-9a-fA-F]{20,}", text.strip()) and not Path(text).exists():
        raise KeyFileError(
            f"public key hex has {len(text.strip())} digits; expected 130 (a 65-byte uncompressed point)"
        )
    data = _read_key_file(text)
    blocks = _pem_blocks(data)
    if not blocks:
        raise KeyFileError(f"{text} is not a PEM key file or a 130-digit public key hex")
    for kind, block in blocks:
        if kind == "PUBLIC KEY":
            try:
                vk = VerifyingKey.from_pem(block)
            except Exception:
                raise KeyFileError(f"{text} is not a valid EC public key "
                                   "(mpota keys are ECDSA P-256)") from None
            if vk.curve != NIST256p:
                raise KeyFileError(
                    f"{text} is a key on curve {_curve_name(vk)}; mpota keys are ECDSA P-256 (NIST256p)"
                )
            return PublicKey(bytes(vk.to_string("uncompressed")), text)
    return load_private_key(text).public


def load_public_keys(items: list[str]) -> list[PublicKey]:
    return [load_public_key(item) for item in items]
