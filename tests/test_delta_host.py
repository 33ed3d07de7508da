"""Delta patches on the host: `mpota sign --delta-from`, `mpota feed add --deltas N`, the manifest's
image.deltas, and verify's checks of the patch files (through the real CLI entry point)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import cli

from host_tools.delta import apply_detools, make_patch
from host_tools.imagebuild import build_app_image
from host_tools.release import decode_stream

B32 = "esp32-generic-4mb"


def code_of(release: int, size: int = 200_000) -> bytes:
    """'Compiled code' of a release: one base blob, each release changes a few spots."""
    rnd = random.Random(7)
    blob = bytearray(rnd.randbytes(size))
    for r in range(release):
        edit = random.Random(100 + r)
        for _ in range(20):
            at = edit.randrange(size - 64)
            blob[at:at + 16] = edit.randbytes(16)
    return bytes(blob)


@pytest.fixture
def work(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "keygen", "rel.pem", "--role", "release")[0] == 0
    assert cli(capsys, "keygen", "ro.pem", "--role", "rollout")[0] == 0
    for i, v in enumerate(("1.0.0", "1.0.1", "1.1.0")):
        Path(f"app-{v}.bin").write_bytes(build_app_image("esp32", v, "micropython", 0, code=code_of(i)))
        argv = ("sign", f"app-{v}.bin", "-k", "rel.pem", "-b", B32, "-V", v, "-o", f"r-{v}")
        assert cli(capsys, *argv)[0] == 0
    return tmp_path


def manifest(path: Path) -> dict:
    import base64

    return json.loads(base64.b64decode(json.loads(path.read_bytes())["payload"]))


def test_make_patch_rebuilds_and_is_small() -> None:
    base, new = code_of(0), code_of(1)
    p = make_patch(base, new)
    raw = decode_stream(p.wire, p.window_bits or 10, 1 << 24) if p.encoding == "detools-zlib" else p.wire
    assert apply_detools(base, raw) == new
    assert len(p.wire) < len(new) // 10, len(p.wire)


def test_sign_delta_from(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "sign", "app-1.1.0.bin", "-k", "rel.pem", "-b", B32, "-V", "1.1.0",
                         "--delta-from", "r-1.0.0", "--delta-from", "r-1.0.1", "--compress", "-o", "d")
    assert code == 0, err
    assert "patch delta-from-1.0.0.patch" in out
    doc = manifest(work / "d" / "manifest.json")
    deltas = doc["image"]["deltas"]
    assert [d["url"] for d in deltas] == ["delta-from-1.0.0.patch.z", "delta-from-1.0.1.patch.z"]
    new = (work / "app-1.1.0.bin").read_bytes()
    for d, v in zip(deltas, ("1.0.0", "1.0.1"), strict=True):
        base = (work / f"app-{v}.bin").read_bytes()
        assert d["base_size"] == len(base) and d["encoding"] == "detools-zlib" and d["window_bits"] == 10
        wire = (work / "d" / d["url"]).read_bytes()
        # (the image builder pads each release with fresh bytes: not a tenth here)
        assert len(wire) == d["size"] and d["size"] < doc["image"]["size"] // 3
        assert apply_detools(base, decode_stream(wire, 10, 1 << 24)) == new
    code, out, _ = cli(capsys, "verify", "d", "--pubkey", "rel.pem.pub")
    assert code == 0 and "2 patch(es)" in out
    # a patch file changed after signing: verify names it
    p = work / "d" / deltas[0]["url"]
    p.write_bytes(p.read_bytes()[:-1] + b"\0")
    code, _, err = cli(capsys, "verify", "d", "--pubkey", "rel.pem.pub")
    assert code != 0 and "delta-from-1.0.0.patch.z: size or SHA-256" in err


@pytest.mark.parametrize("argv, message", [
    (["--delta-from", "nowhere"], "--delta-from nowhere: release nowhere not found"),
    (["--delta-from", "r-1.0.0", "--delta-from", "r-1.0.0"], "has the same image as r-1.0.0"),
])
def test_sign_delta_from_refusals(work: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                  message: str) -> None:
    code, _, err = cli(capsys, "sign", "app-1.1.0.bin", "-k", "rel.pem", "-b", B32, "-V", "1.1.0", *argv,
                       "-o", "d")
    assert code != 0 and message in err and err.count("\n") == 1, err
    assert not (work / "d").exists()


def test_sign_delta_from_itself(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "sign", "app-1.1.0.bin", "-k", "rel.pem", "-b", B32, "-V", "1.1.0",
                       "--delta-from", "r-1.1.0", "-o", "d")
    assert code != 0 and "has the very image being signed" in err


def test_feed_add_deltas(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for v in ("1.0.0", "1.0.1"):
        assert cli(capsys, "feed", "add", f"r-{v}", "--feed", "feed")[0] == 0
    code, _, err = cli(capsys, "feed", "add", "r-1.1.0", "--feed", "feed", "--deltas", "2")
    assert code != 0 and "--key" in err
    code, out, err = cli(capsys, "feed", "add", "r-1.1.0", "--feed", "feed", "--deltas", "1",
                         "--key", "rel.pem")
    assert code == 0, err
    rel = work / "feed" / "releases" / B32 / "1.1.0"
    deltas = manifest(rel / "manifest.json")["image"]["deltas"]
    assert [d["url"] for d in deltas] == ["delta-from-1.0.1.patch.z"]  # the last 1 release only
    assert (rel / "delta-from-1.0.1.patch.z").stat().st_size == deltas[0]["size"]
    assert "patch delta-from-1.0.1.patch.z" in out
    # the release folder is untouched; publishing it points the channel at the feed's copy with patches
    assert "deltas" not in manifest(work / "r-1.1.0" / "manifest.json")["image"]
    code, _, err = cli(capsys, "feed", "publish", "r-1.1.0", "--feed", "feed", "-c", "stable", "-k", "ro.pem")
    assert code == 0, err
    code, out, err = cli(capsys, "feed", "verify", "feed", "--release-pubkey", "rel.pem.pub",
                         "--rollout-pubkey", "ro.pem.pub")
    assert code == 0, out + err
    # a channel doc pins the manifest with the patches
    import hashlib

    ch = json.loads(__import__("base64").b64decode(json.loads(
        (work / "feed" / "channels" / B32 / "stable.json").read_bytes())["payload"]))
    pinned = hashlib.sha256((rel / "manifest.json").read_bytes()).hexdigest()
    assert ch["release"]["manifest_sha256"] == pinned


def test_feed_add_deltas_needs_an_earlier_release(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add = ("feed", "add", "r-1.0.0", "--feed", "feed", "--deltas", "3", "--key")
    code, _, err = cli(capsys, *add, "rel.pem")
    assert code != 0 and "no earlier" in err
    code, _, err = cli(capsys, *add, "ro.pem")
    assert code != 0 and "rollout" in err
