"""CLI conventions an operator relies on: --json, subcommand usage on errors, folders made on demand,
options that do not swallow positionals, `mpota inspect`, data found where the package is installed."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from helpers import cli

from host_tools import bundled
from host_tools.cli import main
from host_tools.imagebuild import build_app_image

B32 = "esp32-generic-4mb"


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("app.bin").write_bytes(build_app_image("esp32", "2.0.0", "micropython", 1, code=bytes(30000)))
    return tmp_path


def test_commands_create_the_folders_they_write(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "keygen", "keys/deep/release.pem", "--role", "release")[0] == 0
    assert stat.S_IMODE((work / "keys" / "deep").stat().st_mode) == 0o700  # a new key folder is private
    code, _, err = cli(capsys, "sign", "app.bin", "--key", "keys/deep/release.pem", "--board", B32,
                       "--version", "2.0.0", "--out", "out/releases/2.0.0")
    assert code == 0, err
    assert (work / "out" / "releases" / "2.0.0" / "manifest.json").is_file()
    # a file where a folder must go is still one clear line
    Path("blocker").write_text("x")
    code, _, err = cli(capsys, "sign", "app.bin", "--key", "keys/deep/release.pem", "--board", B32,
                       "--version", "2.0.0", "--out", "blocker/2.0.0")
    assert code != 0 and err.count("\n") == 1 and "is not a folder" in err
    code, _, err = cli(capsys, "keygen", "blocker/k.pem")
    assert code != 0 and err.startswith("mpota: error: cannot create the folder for key")


def test_json_on_reporting_commands(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = as_json(capsys, "keygen", "rel.pem", "--role", "release")
    assert key["role"] == "release" and len(str(key["keyid"])) == 64
    as_json(capsys, "keygen", "ro.pem", "--role", "rollout")
    shown = as_json(capsys, "key", "show", "rel.pem")
    assert shown["keyid"] == key["keyid"] and shown["kind"] == "private" and shown["role"] == "release"
    assert as_json(capsys, "key", "show", "rel.pem.pub")["kind"] == "public"
    signed = as_json(capsys, "sign", "app.bin", "--key", "rel.pem", "--board", B32, "--version", "2.0.0",
                     "--out", "rel")
    assert signed["manifest"]["version"] == "2.0.0"  # type: ignore[index]
    verified = as_json(capsys, "verify", "rel", "--pubkey", "rel.pem.pub")
    assert verified["verified"] is True and verified["checks"]
    code, _, err = cli(capsys, "feed", "publish", "rel", "--feed", "feed", "--channel", "stable",
                       "--key", "ro.pem")
    assert code == 0, err
    rep = as_json(capsys, "feed", "verify", "feed", "--release-pubkey", "rel.pem.pub",
                  "--rollout-pubkey", "ro.pem.pub")
    assert rep["ok"] is True and rep["channels"][0]["version"] == "2.0.0"  # type: ignore[index]
    added = as_json(capsys, "feed", "add", "rel", "--feed", "feed2")
    assert added["channel_changed"] is False
    published = as_json(capsys, "feed", "publish", "rel", "--feed", "feed2", "--channel", "beta",
                        "--key", "ro.pem")
    assert published["channel"]["seq"] == 1 and published["channel"]["channel"] == "beta"  # type: ignore[index]
    table = as_json(capsys, "partitions", "show", B32)
    assert table["ota_slots"] == ["ota_0", "ota_1"] and table["slot_size"] > 0  # type: ignore[operator]
    # a failing feed verify still prints JSON, and exits non-zero
    code, out, _ = cli(capsys, "feed", "verify", "feed", "--pubkey", "rel.pem.pub", "--json")
    assert code == 1 and json.loads(out)["problems"]


def test_unknown_option_prints_the_subcommands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["feed", "add", "rel", "--feed", "f", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mpota feed add ")
    assert "mpota feed add: error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["partitions", "build", "--board", B32])
    assert "usage: mpota partitions build" in capsys.readouterr().err


def test_help_has_no_doubled_percent(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["rollout", "--help"], ["rollout", "start", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "%%" not in out and "25% batches" in out.replace("\n", " ")


def test_key_options_do_not_swallow_the_release_dir(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "keygen", "rel.pem", "--role", "release")
    cli(capsys, "keygen", "rel2.pem", "--role", "release")
    assert cli(capsys, "sign", "app.bin", "--key", "rel.pem", "--board", B32, "--version", "2.0.0",
               "--out", "rel")[0] == 0
    code, out, err = cli(capsys, "feed", "add", "--release-pubkey", "rel2.pem.pub", "--release-pubkey",
                         "rel.pem.pub", "rel", "--feed", "feed")
    assert code == 0, err
    assert (work / "feed" / "releases" / B32 / "2.0.0" / "manifest.json").is_file()


def test_inspect_decodes_and_checks_signatures(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli(capsys, "keygen", "rel.pem", "--role", "release")
    cli(capsys, "keygen", "ro.pem", "--role", "rollout")
    cli(capsys, "sign", "app.bin", "--key", "rel.pem", "--board", B32, "--version", "2.0.0", "--out", "rel")
    cli(capsys, "feed", "publish", "rel", "--feed", "feed", "--channel", "stable", "--key", "ro.pem")
    code, out, _ = cli(capsys, "inspect", "rel")
    assert code == 0 and "release manifest" in out and "not checked" in out and "version 2.0.0" in out
    code, out, _ = cli(capsys, "inspect", "rel", "--pubkey", "rel.pem.pub")
    assert code == 0 and ": valid by rel.pem.pub" in out
    code, out, _ = cli(capsys, "inspect", "rel/manifest.json", "--pubkey", "ro.pem.pub")
    assert code == 1 and "does not verify" in out
    doc = as_json(capsys, "inspect", f"feed/channels/{B32}/stable.json", "--pubkey", "ro.pem.pub")
    assert doc["kind"] == "channel document" and doc["verified"] is True
    assert doc["payload"]["seq"] == 1  # type: ignore[index]
    code, _, err = cli(capsys, "inspect", "app.bin")
    assert code != 0 and "mpota image info" in err
    Path("junk.json").write_text("{not json")
    code, _, err = cli(capsys, "inspect", "junk.json")
    assert code != 0 and err.startswith("mpota: error: ") and err.count("\n") == 1


def test_bundled_data_prefers_the_installed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(bundled.__file__).resolve().parent.parent
    assert bundled.data_path("boards") == repo / "boards"  # a source checkout
    pkg = tmp_path / "site" / "host_tools"
    (pkg / "_data" / "boards").mkdir(parents=True)
    monkeypatch.setattr(bundled, "_PACKAGE", pkg)
    assert bundled.data_path("boards") == pkg / "_data" / "boards"  # an installed wheel
