"""Application bundles on the host: `mpota sign --app DIR [--mpy]`, `mpota verify`, `mpota image info`
on a release folder, publishing an app-only release into a feed; every bad input one line and a
non-zero exit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, fails

from host_tools.imagebuild import build_app_image
from host_tools.manifest import MAX_APP_FILE_BYTES

B32 = "esp32-generic-4mb"


@pytest.fixture
def work(cli_dir: Path) -> Path:
    tmp_path = cli_dir
    Path("fw.bin").write_bytes(build_app_image("esp32", "2.0.0", "micropython", 0, code=bytes(20000)))
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    (app / "main_app.py").write_text("import lib.util\nprint(lib.util.twice(21))\n")
    (app / "lib" / "util.py").write_text("def twice(x):\n    return 2 * x\n")
    (app / "data.json").write_text('{"threshold": 3}\n')
    (app / "__pycache__").mkdir()
    (app / "__pycache__" / "x.pyc").write_bytes(b"junk")
    return tmp_path


def manifest_of(release: Path) -> dict:  # type: ignore[type-arg]
    import base64

    env = json.loads((release / "manifest.json").read_text())
    return dict(json.loads(base64.b64decode(env["payload"])))


def test_sign_firmware_and_app_verify_and_info(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "sign", "fw.bin", "--app", "app", "-k", "rel.pem", "-b", B32, "-V", "2.0.0",
                         "-o", "rel")
    assert code == 0, err
    assert "app: 3 file(s)" in out and "lib/util.py" in out
    m = manifest_of(work / "rel")
    assert m["image"]["url"] == "firmware.bin"
    assert [f["path"] for f in m["app"]["files"]] == ["data.json", "main_app.py", "lib/util.py"]
    assert m["app"]["root"] == "/app" and (work / "rel" / "app.bin").stat().st_size == m["app"]["size"]
    code, out, err = cli(capsys, "verify", "rel", "-p", "rel.pem")
    assert code == 0, err
    assert "ok: app bundle: 3 file(s) under /app" in out and "main_app.py" in out
    code, out, err = cli(capsys, "image", "info", "rel")
    assert code == 0, err
    assert "release 2.0.0" in out and "app: 3 file(s)" in out and "esp32" in out
    code, out, _ = cli(capsys, "image", "info", "rel", "--json")
    assert json.loads(out)["app"]["files"][2]["path"] == "lib/util.py"


def test_app_only_release_and_publish(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, "app-only release needs --version", "sign", "--app", "app", "-k", "rel.pem", "-b", B32,
          "-o", "r1")
    fails(capsys, "IMAGE, --app DIR or both", "sign", "-k", "rel.pem", "-b", B32, "-V", "1.0.0", "-o", "r1")
    code, out, err = cli(capsys, "sign", "--app", "app", "--app-root", "/myapp", "-k", "rel.pem", "-b", B32,
                         "-V", "2.1.0", "-o", "r1")
    assert code == 0, err
    assert "image: none" in out
    m = manifest_of(work / "r1")
    assert "image" not in m and m["app"]["root"] == "/myapp"
    assert sorted(os.listdir(work / "r1")) == ["app.bin", "manifest.json"]
    assert cli(capsys, "verify", "r1", "-p", "rel.pem")[0] == 0
    code, out, err = cli(capsys, "feed", "publish", "r1", "--feed", "feed", "--channel", "stable",
                         "--key", "ro.pem")
    assert code == 0, err
    rel = work / "feed" / "releases" / B32 / "2.1.0"
    assert sorted(os.listdir(rel)) == ["app.bin", "manifest.json"]
    code, out, err = cli(capsys, "feed", "verify", "feed", "--release-pubkey", "rel.pem",
                         "--rollout-pubkey", "ro.pem")
    assert code == 0, out + err


def test_sign_mpy_compiles_python_files(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "sign", "--app", "app", "--mpy", "-k", "rel.pem", "-b", B32, "-V", "2.0.0",
                         "-o", "rel")
    assert code == 0, err
    m = manifest_of(work / "rel")
    paths = [f["path"] for f in m["app"]["files"]]
    assert paths == ["data.json", "main_app.mpy", "lib/util.mpy"]
    blob = (work / "rel" / "app.bin").read_bytes()
    off = m["app"]["files"][0]["size"]
    assert blob[off:off + 1] == b"M"  # .mpy header
    (work / "app" / "broken.py").write_text("def (:\n")
    fails(capsys, "mpy-cross failed on broken.py", "sign", "--app", "app", "--mpy", "-k", "rel.pem",
          "-b", B32, "-V", "2.0.0", "-o", "rel2")
    assert not (work / "rel2").exists()


def test_tampered_bundle_fails_verify(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "sign", "--app", "app", "-k", "rel.pem", "-b", B32, "-V", "2.0.0", "-o", "rel")[0] == 0
    blob = bytearray((work / "rel" / "app.bin").read_bytes())
    blob[3] ^= 1
    (work / "rel" / "app.bin").write_bytes(bytes(blob))
    fails(capsys, "app.bin: size or SHA-256 does not match", "verify", "rel", "-p", "rel.pem")


@pytest.mark.parametrize("make, pattern", [
    (lambda d: (d / "bad name.py").write_text("x"), "bad name.py.*letters, digits"),
    (lambda d: (d / ".env").write_text("x"), r"\.env.*no leading '\.'"),
    (lambda d: (d / "a" / "b" / "c" / "d").mkdir(parents=True) or (d / "a/b/c/d/e.py").write_text("x"),
     "at most 4"),
    (lambda d: (d / "big.bin").write_bytes(bytes(MAX_APP_FILE_BYTES + 1)), "at most 262144"),
    (lambda d: (d / "link.py").symlink_to(d / "main_app.py"), "not a plain file"),
    (lambda d: [(d / f"m{i}.py").write_text("") for i in range(70)], "at most 64"),
])
def test_bad_app_folders(work: Path, capsys: pytest.CaptureFixture[str], make: Any, pattern: str) -> None:
    make(work / "app")
    fails(capsys, pattern, "sign", "--app", "app", "-k", "rel.pem", "-b", B32, "-V", "2.0.0", "-o", "rel")
    assert not (work / "rel").exists()


def test_bad_app_arguments(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, "not a folder", "sign", "--app", "nope", "-k", "rel.pem", "-b", B32, "-V", "2.0.0",
          "-o", "r")
    (work / "empty").mkdir()
    fails(capsys, "holds no files", "sign", "--app", "empty", "-k", "rel.pem", "-b", B32, "-V", "2.0.0",
          "-o", "r")
    fails(capsys, "app.root '/a/b'", "sign", "--app", "app", "--app-root", "/a/b", "-k", "rel.pem", "-b", B32,
          "-V", "2.0.0", "-o", "r")
    fails(capsys, "--mpy compiles the files of --app", "sign", "fw.bin", "--mpy", "-k", "rel.pem", "-b", B32,
          "-V", "2.0.0", "-o", "r")
    fails(capsys, "--delta-from needs a firmware image", "sign", "--app", "app", "--delta-from", "x", "-k",
          "rel.pem", "-b", B32, "-V", "2.0.0", "-o", "r")
