"""sign_release / verify_release: genuine ESP32 and ESP32-S3 images, every refusal, independent checks."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import ecdsa
import pytest
from ecdsa.util import sigdecode_der

from host_tools.dsse import CHANNEL_PAYLOAD_TYPE, RELEASE_PAYLOAD_TYPE, envelope_bytes, sign_envelope
from host_tools.errors import MpotaError
from host_tools.imagebuild import build_app_image, build_combined_image
from host_tools.keys import PrivateKey, generate_key, load_private_key
from host_tools.manifest import (
    FirmwareManifest,
    ManifestError,
    create_manifest,
    format_time,
    load_manifest,
    save_manifest,
    utc_now,
)
from host_tools.release import sign_release, verify_release

MICROPYTHON = Path(sys.executable).with_name("micropython")
BOARDS = {"esp32": "esp32-generic-4mb", "esp32s3": "esp32s3-generic-8mb"}


@pytest.fixture(scope="module")
def kdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    generate_key(d / "release", "release")
    generate_key(d / "rollout", "rollout")
    generate_key(d / "other", "release")
    return d


@pytest.fixture(scope="module")
def rel_key(kdir: Path) -> PrivateKey:
    return load_private_key(kdir / "release", "release")


def _image(tmp: Path, chip: str = "esp32", version: str = "1.2.3", secure: int = 2, name: str = "",
           **kw: Any) -> Path:
    path = tmp / (name or f"{chip}-{version}.bin")
    path.write_bytes(build_app_image(chip, version, "micropython", secure, **kw))
    return path


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _independent_payload(manifest_file: Path, point: bytes) -> dict[str, Any]:
    """Check a manifest's signature with json + base64 + ecdsa only (none of our code)."""
    env = json.loads(manifest_file.read_bytes())
    assert env["payloadType"] == "application/vnd.mpota.release+json"
    payload = base64.b64decode(env["payload"])
    t = env["payloadType"].encode()
    message = b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)
    vk = ecdsa.VerifyingKey.from_string(point, curve=ecdsa.NIST256p)
    (sig,) = env["signatures"]
    assert sig["keyid"] == hashlib.sha256(point).hexdigest()
    assert vk.verify(base64.b64decode(sig["sig"]), message, hashfunc=hashlib.sha256,
                     sigdecode=sigdecode_der)
    doc: dict[str, Any] = json.loads(payload)
    return doc


@pytest.mark.parametrize("chip", ["esp32", "esp32s3"])
@pytest.mark.parametrize("compress", [False, True])
def test_sign_then_verify(tmp_path: Path, rel_key: PrivateKey, chip: str, compress: bool) -> None:
    img = _image(tmp_path, chip, code=bytes(40000))  # zeros: compressible like real code padding
    out = tmp_path / "rel"
    info = sign_release(img, rel_key, BOARDS[chip], "1.2.3", out_dir=out, compress=compress, notes="fixes",
                        required=True, build_id="b-42")
    name = "firmware.bin.z" if compress else "firmware.bin"
    assert _entries(out) == sorted(["manifest.json", name])
    assert _entries(tmp_path) == [img.name, "rel"]  # no temp folder left behind
    doc = _independent_payload(out / "manifest.json", rel_key.public.point)
    raw = img.read_bytes()
    wire = (out / name).read_bytes()
    assert list(doc) == ["_type", "spec", "version", "build_id", "security_version", "target_hardware",
                         "chip", "min_bootloader_version", "image", "metadata", "created", "expires"]
    assert doc["_type"] == "release" and doc["spec"] == 1 and doc["version"] == "1.2.3"
    assert doc["build_id"] == "b-42" and doc["security_version"] == 2
    assert doc["target_hardware"] == [BOARDS[chip]] and doc["chip"] == chip
    assert doc["metadata"] == {"release_notes": "fixes", "required": True}
    im = doc["image"]
    assert im["url"] == name and im["size"] == len(raw)
    assert im["hash"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert im["transfer_size"] == len(wire)
    assert im["transfer_hash"] == "sha256:" + hashlib.sha256(wire).hexdigest()
    if compress:
        assert im["encoding"] == "zlib" and im["window_bits"] == 10 and len(wire) < len(raw)
        assert zlib.decompressobj(wbits=10).decompress(wire) == raw  # decodable with the recorded window
    else:
        assert im["encoding"] == "none" and "window_bits" not in im and wire == raw
    res = verify_release(out, [rel_key.public])
    assert res.manifest.version == "1.2.3" and res.manifest.to_dict() == doc
    assert verify_release(out / "manifest.json", [rel_key.public], board=BOARDS[chip]).manifest_sha256 == \
        hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert info.manifest.to_dict() == doc and info.image_path == out / name


def test_micropython_inflates_the_stream(tmp_path: Path, rel_key: PrivateKey) -> None:
    """The unix port's deflate module (what the device uses) decodes our stream with the recorded window."""
    img = _image(tmp_path, code=bytes(30000) + b"\x01\x02" * 4000)
    out = tmp_path / "rel"
    sign_release(img, rel_key, "esp32-generic-4mb", "1.2.3", out_dir=out, compress=True, window_bits=10)
    script = (
        "import deflate, hashlib\n"
        f"f = open({str(out / 'firmware.bin.z')!r}, 'rb')\n"
        "d = deflate.DeflateIO(f, deflate.ZLIB, 10)\n"
        "h = hashlib.sha256(); buf = bytearray(4096); n = 0\n"
        "while True:\n"
        "    k = d.readinto(buf)\n"
        "    if not k: break\n"
        "    h.update(buf[:k]); n += k\n"
        "print(n, h.digest().hex())\n"
    )
    proc = subprocess.run([str(MICROPYTHON), "-X", "heapsize=64k", "-c", script], capture_output=True,
                          text=True, timeout=60)
    raw = img.read_bytes()
    assert proc.stdout.split() == [str(len(raw)), hashlib.sha256(raw).hexdigest()], proc.stderr


def _combined_file(tmp: Path) -> Path:
    from host_tools.boards import load_board
    from host_tools.partitions import build_binary

    b = load_board("esp32-generic-4mb")
    data = build_combined_image("esp32", build_app_image("esp32", "1.2.3"), build_binary(b.table), 0x1000)
    path = tmp / "firmware.bin"
    path.write_bytes(data)
    return path


def _bad_inputs(tmp: Path, kdir: Path) -> dict[str, tuple[dict[str, Any], str]]:
    good = _image(tmp)
    (tmp / "empty.bin").write_bytes(b"")
    (tmp / "garbage.bin").write_bytes(b"\x00garbage" * 100)
    (tmp / "truncated.bin").write_bytes(good.read_bytes()[:50000])
    flipped = bytearray(good.read_bytes())
    flipped[70000] ^= 1
    (tmp / "flipped.bin").write_bytes(flipped)
    (tmp / "exists").mkdir()
    (tmp / "exists" / "x").write_text("keep")
    (tmp / "file-out").write_text("keep")
    big = _image(tmp, code_size=0x180000, name="big.bin")
    (kdir / "pub-only.pem").write_bytes((kdir / "release.pub").read_bytes())
    base: dict[str, Any] = {"image_path": good, "board": "esp32-generic-4mb", "version": "1.2.3",
                            "key": kdir / "release"}
    cases = {
        "missing image": ({"image_path": tmp / "nope.bin"}, "cannot read image .*No such file"),
        "empty image": ({"image_path": tmp / "empty.bin"}, "is empty"),
        "garbage image": ({"image_path": tmp / "garbage.bin"}, "not an ESP image"),
        "truncated image": ({"image_path": tmp / "truncated.bin"}, "truncated"),
        "corrupt image": ({"image_path": tmp / "flipped.bin"}, "checksum mismatch"),
        "combined image": ({"image_path": _combined_file(tmp)}, "combined flash image"),
        "wrong chip": ({"image_path": _image(tmp, "esp32s3")}, "is an esp32s3 image, but board"),
        "oversize": ({"image_path": big}, r"larger than board esp32-generic-4mb's OTA slot \(1572864"),
        "unknown board": ({"board": "esp99"}, "unknown board 'esp99'"),
        "rollout key": ({"key": kdir / "rollout"}, "is a rollout key; this step needs a release key"),
        "public-only key": ({"key": kdir / "pub-only.pem"}, "only a public key"),
        "missing key": ({"key": kdir / "none.pem"}, "cannot read key"),
        "invalid version": ({"version": "1.2"}, "invalid version '1.2'"),
        "version mismatch": ({"version": "1.2.4"}, "image says version '1.2.3'.*--force-version"),
        "output exists": ({"out_dir": tmp / "exists"}, "already exists"),
        "output is a file": ({"out_dir": tmp / "file-out"}, "already exists"),
        "output parent is a file": ({"out_dir": tmp / "file-out" / "b"}, "file-out is not a folder"),
        "long notes": ({"notes": "x" * 5000}, "release_notes must be a string of at most 4096"),
        "bad window": ({"compress": True, "window_bits": 16}, "window bits 16"),
    }
    return {k: ({**base, **v}, p) for k, (v, p) in cases.items()}


def test_every_bad_input_refused_and_nothing_written(tmp_path: Path, kdir: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    for name, (kw, pattern) in _bad_inputs(work, kdir).items():
        before = sorted(p.name for p in work.rglob("*"))
        out = kw.pop("out_dir", work / "out")
        key = kw.pop("key")
        try:
            signing_key = load_private_key(key, "release")
        except MpotaError as exc:
            assert re.search(pattern, str(exc)), (name, str(exc))
            continue
        with pytest.raises(MpotaError) as err:
            sign_release(key=signing_key, out_dir=out, **kw)
        msg = str(err.value)
        assert re.search(pattern, msg), (name, msg)
        assert "\n" not in msg, name
        assert sorted(p.name for p in work.rglob("*")) == before, name  # nothing half-written
    assert (work / "exists" / "x").read_text() == "keep" and (work / "file-out").read_text() == "keep"


def test_force_version_and_security_version(tmp_path: Path, rel_key: PrivateKey) -> None:
    img = _image(tmp_path, version="1.2.3", secure=2)
    info = sign_release(img, rel_key, "esp32-generic-4mb", "1.3.0-rc.1", out_dir=tmp_path / "r",
                        force_version=True, security_version=5)
    assert info.manifest.version == "1.3.0-rc.1" and info.manifest.security_version == 5
    assert any("forced" in w for w in info.warnings) and any("secure_version 2" in w for w in info.warnings)
    res = verify_release(tmp_path / "r", [rel_key.public])
    assert any("image says 1.2.3" in c for c in res.checks)
    # An app_desc version with ESP-IDF's leading "v" matches the plain release version.
    vimg = _image(tmp_path, version="v2.0.0")
    vinfo = sign_release(vimg, rel_key, "esp32-generic-4mb", "2.0.0", out_dir=tmp_path / "v")
    assert vinfo.manifest.version == "2.0.0"


def test_empty_existing_output_folder_is_used(tmp_path: Path, rel_key: PrivateKey) -> None:
    (tmp_path / "out").mkdir()
    sign_release(_image(tmp_path), rel_key, "esp32-generic-4mb", "1.2.3", out_dir=tmp_path / "out")
    assert _entries(tmp_path / "out") == ["firmware.bin", "manifest.json"]


def _resign(out: Path, key: PrivateKey, change: Any) -> None:
    env = json.loads((out / "manifest.json").read_bytes())
    doc = json.loads(base64.b64decode(env["payload"]))
    change(doc)
    payload = json.dumps(doc).encode()
    (out / "manifest.json").write_bytes(envelope_bytes(sign_envelope(RELEASE_PAYLOAD_TYPE, payload, key)))


def test_verify_failures(tmp_path: Path, rel_key: PrivateKey, kdir: Path) -> None:
    img = _image(tmp_path, code=bytes(40000))
    other = load_private_key(kdir / "other")

    def fresh(name: str, compress: bool = False) -> Path:
        out = tmp_path / name
        sign_release(img, rel_key, "esp32-generic-4mb", "1.2.3", out_dir=out, compress=compress)
        return out

    out = fresh("wrong-key")
    with pytest.raises(MpotaError, match="not signed by any of the given keys"):
        verify_release(out, [other.public])

    out = fresh("flip-image")
    data = bytearray((out / "firmware.bin").read_bytes())
    data[1000] ^= 1
    (out / "firmware.bin").write_bytes(data)
    with pytest.raises(MpotaError, match="SHA-256 does not match the manifest's transfer_hash"):
        verify_release(out, [rel_key.public])

    out = fresh("short-image")
    (out / "firmware.bin").write_bytes(img.read_bytes()[:-1])
    with pytest.raises(MpotaError, match=r"is \d+ bytes, the manifest says"):
        verify_release(out, [rel_key.public])

    out = fresh("missing-image")
    (out / "firmware.bin").unlink()
    with pytest.raises(MpotaError, match="cannot read image"):
        verify_release(out, [rel_key.public])

    out = fresh("tampered-manifest")
    env = json.loads((out / "manifest.json").read_bytes())
    doc = json.loads(base64.b64decode(env["payload"]))
    doc["security_version"] = 99
    env["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    (out / "manifest.json").write_text(json.dumps(env))
    with pytest.raises(MpotaError, match="bad signature"):
        verify_release(out, [rel_key.public])

    out = fresh("channel-type")
    payload = base64.b64decode(json.loads((out / "manifest.json").read_bytes())["payload"])
    (out / "manifest.json").write_bytes(envelope_bytes(sign_envelope(CHANNEL_PAYLOAD_TYPE, payload, rel_key)))
    with pytest.raises(MpotaError, match="payloadType is 'application/vnd.mpota.channel\\+json'"):
        verify_release(out, [rel_key.public])

    # A zlib stream made with a bigger window than the manifest records: the device could not
    # decode it in its buffer, and verify says so (signed consistently otherwise).
    out = fresh("big-window", compress=True)
    c = zlib.compressobj(level=9, wbits=15)
    wide = c.compress(img.read_bytes()) + c.flush()
    (out / "firmware.bin.z").write_bytes(wide)
    _resign(out, rel_key, lambda d: d["image"].update(
        transfer_size=len(wide), transfer_hash="sha256:" + hashlib.sha256(wide).hexdigest()))
    with pytest.raises(MpotaError, match="does not decode with window_bits 10"):
        verify_release(out, [rel_key.public])

    out = fresh("cut-stream", compress=True)
    cut = (out / "firmware.bin.z").read_bytes()[:-10]
    (out / "firmware.bin.z").write_bytes(cut)
    _resign(out, rel_key, lambda d: d["image"].update(
        transfer_size=len(cut), transfer_hash="sha256:" + hashlib.sha256(cut).hexdigest()))
    with pytest.raises(MpotaError, match="truncated|does not decode"):
        verify_release(out, [rel_key.public])

    out = fresh("expired")
    _resign(out, rel_key, lambda d: d.update(created="2020-01-01T00:00:00Z", expires="2021-01-01T00:00:00Z"))
    with pytest.raises(MpotaError, match="expired at 2021-01-01T00:00:00Z"):
        verify_release(out, [rel_key.public])
    late = verify_release(out, [rel_key.public], allow_expired=True)
    assert late.manifest.expires == "2021-01-01T00:00:00Z"

    out = fresh("escape")
    _resign(out, rel_key, lambda d: d["image"].update(url="../wrong-key/firmware.bin"))
    with pytest.raises(MpotaError, match="outside the release folder"):
        verify_release(out, [rel_key.public])

    out = fresh("other-board")
    with pytest.raises(MpotaError, match="board esp32s3-generic-8mb is not in target_hardware"):
        verify_release(out, [rel_key.public], board="esp32s3-generic-8mb")


def test_seed_api_create_save_load(tmp_path: Path, rel_key: PrivateKey) -> None:
    img = _image(tmp_path)
    m = create_manifest(img, "1.2.3", target_hardware="esp32-generic-4mb", chip="esp32", security_version=2,
                        release_notes="seed parity", required=False, min_bootloader_version="2.1.0",
                        expires=format_time(utc_now().replace(year=utc_now().year + 1)))
    assert m.image.size == img.stat().st_size and m.image.url == img.name
    path = tmp_path / "manifest.json"
    save_manifest(m, path, rel_key)
    loaded = load_manifest(path, [rel_key.public])
    assert loaded == m and loaded.min_bootloader_version == "2.1.0"
    assert FirmwareManifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize("change, pattern", [
    (lambda d: d.update(version="1.2"), "invalid version"),
    (lambda d: d.update(_type="channel"), "expected 'release'"),
    (lambda d: d.update(spec=2), "spec 2 is not supported"),
    (lambda d: d.pop("chip"), "missing field 'chip'"),
    (lambda d: d.update(chip="esp8266"), "not a known ESP32 chip"),
    (lambda d: d.update(security_version=-1), "security_version must be an integer"),
    (lambda d: d.update(security_version=True), "security_version must be an integer"),
    (lambda d: d.update(target_hardware=[]), "non-empty list"),
    (lambda d: d["image"].update(hash="md5:abc"), "image.hash must be 'sha256:'"),
    (lambda d: d["image"].update(encoding="gzip"), "image.encoding 'gzip'"),
    (lambda d: d["image"].update(encoding="zlib", window_bits=8), "window_bits must be an integer in 9..15"),
    (lambda d: d["image"].update(transfer_size=5), "must equal size/hash for encoding 'none'"),
    (lambda d: d["image"].update(url=""), "image.url"),
    (lambda d: d["metadata"].update(required="yes"), "metadata.required must be true or false"),
    (lambda d: d.update(created="yesterday"), "not a UTC timestamp"),
    (lambda d: d.update(expires="2000-01-01T00:00:00Z"), "is not after created"),
])
def test_manifest_validation(tmp_path: Path, change: Any, pattern: str) -> None:
    img = _image(tmp_path)
    d = create_manifest(img, "1.2.3").to_dict()
    change(d)
    with pytest.raises(ManifestError, match=pattern):
        FirmwareManifest.from_dict(d)


def test_firmware_manifest_example_runs(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "firmware_manifest_example.py"
    proc = subprocess.run([sys.executable, str(example), "--keep", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "loaded and verified: version 1.2.3" in proc.stdout
    assert "tampered manifest refused" in proc.stdout and "invalid manifest refused" in proc.stdout
    # What it saved is a real signed manifest: our loader accepts it with the key it wrote.
    from host_tools.keys import load_public_key

    m = load_manifest(tmp_path / "manifest.json", [load_public_key(tmp_path / "release.pem.pub")])
    assert m.security_version == 4 and m.min_bootloader_version == "2.1.0"


def test_signed_version_downgrade_flag(tmp_path: Path, rel_key: PrivateKey) -> None:
    img = _image(tmp_path)
    plain = sign_release(img, rel_key, "esp32-generic-4mb", "1.2.3", out_dir=tmp_path / "a")
    plain_doc = _independent_payload(plain.manifest_path, rel_key.public.point)
    assert "allow_downgrade" not in plain_doc["metadata"]
    down = sign_release(img, rel_key, "esp32-generic-4mb", "1.2.3", out_dir=tmp_path / "b",
                        allow_version_downgrade=True)
    meta = _independent_payload(down.manifest_path, rel_key.public.point)["metadata"]
    assert meta == {"release_notes": "", "required": False, "allow_downgrade": True}
    assert verify_release(tmp_path / "b", [rel_key.public]).manifest.metadata.allow_downgrade is True


ORDERED = ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
           "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0"]


def test_version_rule_and_device_agreement() -> None:
    from host_tools.versions import VersionError, compare_versions, parse_version

    for i, a in enumerate(ORDERED):
        for j, b in enumerate(ORDERED):
            assert compare_versions(a, b) == (i > j) - (i < j), (a, b)
    assert str(parse_version("1.3.0-rc.1")) == "1.3.0-rc.1"
    for bad in ("1.2", "v1.2.3", "01.2.3", "1.2.3+build", "1.2.3-", "1.2.3-rc..1", "1.2.3-01", "x" * 40, ""):
        with pytest.raises(VersionError):
            parse_version(bad)
    # The device compares with its own code: it must order our versions the same way.
    import importlib

    device_version = importlib.import_module("mpota.version")
    for i, a in enumerate(ORDERED):
        for j, b in enumerate(ORDERED):
            assert device_version.compare(a, b) == (i > j) - (i < j), (a, b)
