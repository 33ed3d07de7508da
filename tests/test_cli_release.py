"""The release commands through the real entry point: host_tools.cli.main and the installed `mpota` script."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import ecdsa
import pytest
from helpers import cli, fails

from host_tools.boards import load_board
from host_tools.cli import main
from host_tools.imagebuild import build_app_image, build_combined_image
from host_tools.partitions import build_binary

MPOTA = Path(sys.executable).with_name("mpota")
B32 = "esp32-generic-4mb"
BS3 = "esp32s3-generic-8mb"


@pytest.fixture
def work(cli_dir: Path) -> Path:
    Path("app32.bin").write_bytes(build_app_image("esp32", "2.0.0", "micropython", 3, code=bytes(30000)))
    Path("apps3.bin").write_bytes(build_app_image("esp32s3", "2.0.0", "micropython", 3, code=bytes(30000)))
    return cli_dir


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["keygen"],
        ["key", "show"],
        ["image", "info"],
        ["image", "extract-app"],
        ["sign"],
        ["verify"],
        ["feed", "publish"],
        ["feed", "add"],
        ["feed", "verify"],
    ):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: mpota " + " ".join(argv)), out
    with pytest.raises(SystemExit):
        main(["keygen", "--help"])
    assert "# mpota-role: ROLE" in capsys.readouterr().out


def test_keygen_and_key_show(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert stat.S_IMODE(os.stat("rel.pem").st_mode) == 0o600
    code, out, _ = cli(capsys, "key", "show", "rel.pem")
    assert code == 0 and "role:       release" in out
    hexline = [ln for ln in out.splitlines() if ln.startswith("public hex:")][0]
    pub_hex = hexline.split()[-1]
    assert len(pub_hex) == 130 and pub_hex.startswith("04")
    code, out2, _ = cli(capsys, "key", "show", "rel.pem.pub")
    assert code == 0 and pub_hex in out2 and "role" not in out2
    fails(capsys, "rel.pem already exists", "keygen", "rel.pem")
    fails(capsys, "cannot read key", "key", "show", "nope.pem")
    with pytest.raises(SystemExit) as e:
        main(["keygen", "x.pem", "--role", "admin"])
    assert e.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("chip, image", [("esp32", "app32.bin"), ("esp32s3", "apps3.bin")])
def test_image_info(work: Path, capsys: pytest.CaptureFixture[str], chip: str, image: str) -> None:
    code, out, err = cli(capsys, "image", "info", image)
    assert code == 0 and err == ""
    assert "kind:       app image" in out and f"chip:       {chip}" in out
    assert "app:        micropython 2.0.0, secure_version 3" in out and "sha256:     valid" in out
    code, out, _ = cli(capsys, "image", "info", image, "--json")
    doc = json.loads(out)
    assert (
        code == 0 and doc["kind"] == "app" and doc["chip"] == chip and doc["app_desc"]["version"] == "2.0.0"
    )


@pytest.mark.parametrize("chip, board, image", [("esp32", B32, "app32.bin"), ("esp32s3", BS3, "apps3.bin")])
def test_combined_info_extract_then_sign(
    work: Path, capsys: pytest.CaptureFixture[str], chip: str, board: str, image: str
) -> None:
    b = load_board(board)
    app = Path(image).read_bytes()
    Path("firmware.bin").write_bytes(
        build_combined_image(chip, app, build_binary(b.table), b.bootloader_offset)
    )
    code, out, _ = cli(capsys, "image", "info", "firmware.bin")
    assert code == 0 and "kind:       combined flash image" in out
    assert f"write at 0x{b.bootloader_offset:x}" in out and "app in ota_0 at 0x10000" in out
    assert "sign only the app" in out
    fails(capsys, "combined flash image .*mpota image extract-app", "sign", "firmware.bin", "--key",
          "rel.pem", "--board", board, "--version", "2.0.0", "--out", "r")
    assert not Path("r").exists()
    code, out, _ = cli(capsys, "image", "extract-app", "firmware.bin", "--out", "app.bin")
    assert code == 0 and Path("app.bin").read_bytes() == app
    fails(capsys, "already exists", "image", "extract-app", "firmware.bin", "--out", "app.bin")
    code, out, _ = cli(
        capsys, "sign", "app.bin", "--key", "rel.pem", "--board", board, "--version", "2.0.0", "--out", "r"
    )
    assert code == 0 and "signed 2.0.0" in out


def test_sign_verify_publish_verify(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "sign", "app32.bin", "--key", "rel.pem", "--board", B32, "--version",
                         "2.0.0", "--compress", "--window-bits", "11", "--notes", "hello", "--required",
                         "--expires", "30d", "--out", "rel")
    assert code == 0, err
    assert "zlib window_bits 11" in out and sorted(os.listdir("rel")) == ["firmware.bin.z", "manifest.json"]
    code, out, _ = cli(capsys, "verify", "rel", "--pubkey", "rel.pem.pub")
    assert code == 0 and "ok: zlib stream decodes with window_bits 11" in out and "verified 2.0.0" in out
    fails(capsys, "not signed by any of the given keys", "verify", "rel", "--pubkey", "ro.pem.pub")
    code, out, _ = cli(capsys, "feed", "publish", "rel", "--feed", "feed", "--channel", "stable", "--key",
                       "ro.pem", "--groups", "canary,internal", "--percentage", "5", "--window",
                       "01:00-05:00", "--rollout-id", "r-1")
    assert code == 0 and "(seq 1)" in out and "rollout r-1: active, groups canary,internal, 5%" in out
    chan = json.loads(Path(f"feed/channels/{B32}/stable.json").read_text())
    assert chan["payloadType"] == "application/vnd.mpota.channel+json"
    code, out, _ = cli(capsys, "feed", "publish", "rel", "--feed", "feed", "--channel", "stable", "--key",
                       "ro.pem", "--state", "paused")
    assert code == 0 and "(seq 2)" in out and "paused" in out
    code, out, _ = cli(capsys, "feed", "verify", "feed", "--pubkey", "rel.pem.pub", "-p", "ro.pem.pub")
    assert code == 0 and "1 channel(s), 1 release(s) verified" in out
    code, out, _ = cli(
        capsys, "feed", "verify", "feed", "--release-pubkey", "rel.pem.pub", "--rollout-pubkey", "ro.pem.pub"
    )
    assert code == 0
    fails(capsys, r"feed feed: \d problem\(s\)", "feed", "verify", "feed", "--pubkey", "rel.pem.pub")
    fails(capsys, "is a release key", "feed", "publish", "rel", "--feed", "feed", "--channel", "stable",
          "--key", "rel.pem")
    # Demo single-key mode, explicitly asked for.
    code, out, _ = cli(capsys, "feed", "publish", "rel", "--feed", "feed", "--channel", "demo", "--key",
                       "rel.pem", "--any-role")
    assert code == 0 and "(seq 1)" in out


def test_downgrade_needs_flag(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("low.bin").write_bytes(build_app_image("esp32", "2.1.0", "micropython", 1))
    assert (
        cli(capsys, "sign", "app32.bin", "--key", "rel.pem", "--board", B32, "--version", "2.0.0", "--out",
            "r1")[0]
        == 0
    )
    assert (
        cli(
            capsys, "sign", "low.bin", "--key", "rel.pem", "--board", B32, "--version", "2.1.0", "--out", "r2"
        )[0]
        == 0
    )
    assert (
        cli(capsys, "feed", "publish", "r1", "--feed", "f", "--channel", "stable", "--key", "ro.pem")[0] == 0
    )
    before = Path(f"f/channels/{B32}/stable.json").read_bytes()
    fails(capsys, "security_version 1 is lower .*--allow-downgrade", "feed", "publish", "r2", "--feed", "f",
          "--channel", "stable", "--key", "ro.pem")
    assert Path(f"f/channels/{B32}/stable.json").read_bytes() == before
    assert not Path(f"f/releases/{B32}/2.1.0").exists()
    code, out, err = cli(capsys, "feed", "publish", "r2", "--feed", "f", "--channel", "stable", "--key",
                         "ro.pem", "--allow-downgrade")
    assert code == 0 and "(seq 2)" in out and "warning: security_version 1 is lower" in err


def test_sign_bad_inputs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("empty.bin").write_bytes(b"")
    Path("garbage.bin").write_bytes(os.urandom(5000).replace(b"\xe9", b"\x00"))
    Path("trunc.bin").write_bytes(Path("app32.bin").read_bytes()[:40000])
    Path("big.bin").write_bytes(build_app_image("esp32", "2.0.0", code_size=0x180000))
    Path("p384.pem").write_bytes(
        b"# mpota-role: release\n" + ecdsa.SigningKey.generate(curve=ecdsa.NIST384p).to_pem()
    )
    Path("junk.pem").write_text("hello\n")
    base = ["--board", B32, "--version", "2.0.0", "--out", "out"]
    cases = [
        ("cannot read image missing.bin", ["sign", "missing.bin", "--key", "rel.pem", *base]),
        ("is empty", ["sign", "empty.bin", "--key", "rel.pem", *base]),
        ("not an ESP image", ["sign", "garbage.bin", "--key", "rel.pem", *base]),
        ("truncated", ["sign", "trunc.bin", "--key", "rel.pem", *base]),
        ("is an esp32s3 image, but board", ["sign", "apps3.bin", "--key", "rel.pem", *base]),
        ("larger than board .* OTA slot", ["sign", "big.bin", "--key", "rel.pem", *base]),
        (
            "unknown board 'esp99'",
            ["sign", "app32.bin", "--key", "rel.pem", "--board", "esp99", "--version", "2.0.0", "--out",
             "out"],
        ),
        ("cannot read key", ["sign", "app32.bin", "--key", "nokey.pem", *base]),
        ("curve NIST384p", ["sign", "app32.bin", "--key", "p384.pem", *base]),
        ("not a PEM key file", ["sign", "app32.bin", "--key", "junk.pem", *base]),
        ("only a public key", ["sign", "app32.bin", "--key", "rel.pem.pub", *base]),
        ("is a rollout key", ["sign", "app32.bin", "--key", "ro.pem", *base]),
        (
            "invalid version 'v2'",
            ["sign", "app32.bin", "--key", "rel.pem", "--board", B32, "--version", "v2", "--out", "out"],
        ),
        (
            "image says version '2.0.0'",
            ["sign", "app32.bin", "--key", "rel.pem", "--board", B32, "--version", "2.0.1", "--out", "out"],
        ),
        (
            "--expires .* is in the past",
            ["sign", "app32.bin", "--key", "rel.pem", *base, "--expires", "2001-01-01T00:00:00Z"],
        ),
        ("--expires 'soon'", ["sign", "app32.bin", "--key", "rel.pem", *base, "--expires", "soon"]),
    ]
    for pattern, argv in cases:
        fails(capsys, pattern, *argv)
        assert not Path("out").exists(), pattern
    Path("out").mkdir()
    Path("out/keep").write_text("x")
    fails(capsys, "output out already exists", "sign", "app32.bin", "--key", "rel.pem", *base)
    assert os.listdir("out") == ["keep"]
    leftovers = [n for n in os.listdir(".") if n.endswith(".tmp")]
    assert leftovers == []


def test_verify_bad_inputs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli(capsys, "sign", "app32.bin", "--key", "rel.pem", "--board", B32, "--version", "2.0.0", "--out",
            "rel")[0]
        == 0
    )
    fails(capsys, "release nowhere not found", "verify", "nowhere", "--pubkey", "rel.pem.pub")
    fails(
        capsys,
        r"--window '1-2' must be HH:MM-HH:MM",
        "feed",
        "publish",
        "rel",
        "--feed",
        "f",
        "--channel",
        "s",
        "--key",
        "ro.pem",
        "--window",
        "1-2",
    )
    assert not Path("f").exists()
    fails(capsys, "expected 130", "verify", "rel", "--pubkey", "abcdef0123456789abcdef")
    data = bytearray(Path("rel/firmware.bin").read_bytes())
    data[-40] ^= 0xFF
    Path("rel/firmware.bin").write_bytes(data)
    fails(capsys, "transfer_hash", "verify", "rel", "--pubkey", "rel.pem.pub")
    Path("rel/manifest.json").write_text("{not json")
    fails(capsys, "is not JSON", "verify", "rel/manifest.json", "--pubkey", "rel.pem.pub")


def test_installed_script(work: Path) -> None:
    """The console script itself: exit codes and one-line errors without a traceback."""
    ok = subprocess.run(
        [str(MPOTA), "image", "info", "app32.bin"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "micropython 2.0.0" in ok.stdout
    bad = subprocess.run(
        [str(MPOTA), "sign", "apps3.bin", "--key", "rel.pem", "--board", B32, "--version", "2.0.0", "--out",
         "o"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert (
        bad.stderr == "mpota: error: apps3.bin is an esp32s3 image, but board esp32-generic-4mb is an esp32\n"
    )


def test_feed_add_stages_a_release(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli(capsys, "sign", "app32.bin", "--key", "rel.pem", "--board", B32, "--version", "2.0.0", "--out",
            "r")[0]
        == 0
    )
    code, out, _ = cli(capsys, "feed", "add", "r", "--feed", "f", "--release-pubkey", "rel.pem.pub")
    assert code == 0 and f"releases/{B32}/2.0.0/manifest.json (no channel changed)" in out
    assert not Path("f/channels").exists()
    fails(capsys, "not signed by any of the given keys", "feed", "add", "r", "--feed", "f2",
          "--release-pubkey", "ro.pem.pub")
    assert not Path("f2/releases").exists()


def test_sign_stock_image_needs_a_version_and_says_why(work: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # MicroPython's own ESP32 builds leave esp_app_desc_t.version (and the project name) empty
    Path("stock.bin").write_bytes(build_app_image("esp32", "", "", 1, code=bytes(30000), build="2.1.0"))
    line = fails(capsys, r"carries no version .*MicroPython.*give --version",
                 "sign", "stock.bin", "-k", "rel.pem", "-b", B32, "-o", "rel-stock")
    assert "CONFIG_APP_EXCLUDE_PROJECT_VER_VAR" in line
    assert not Path("rel-stock").exists()
    code, out, err = cli(capsys, "sign", "stock.bin", "-k", "rel.pem", "-b", B32, "-V", "2.1.0",
                         "-o", "rel-stock")
    assert code == 0 and "signed 2.1.0" in out and "warning" not in err, (out, err)
    code, out, _ = cli(capsys, "verify", "rel-stock", "-p", "rel.pem.pub")
    assert code == 0 and "the image carries no version of its own" in out, out
    # an image that carries its version needs no --version (and is signed as that version)
    code, out, _ = cli(capsys, "sign", "app32.bin", "-k", "rel.pem", "-b", B32, "-o", "rel-own")
    assert code == 0 and "signed 2.0.0" in out, out
