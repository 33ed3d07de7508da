"""`mpota keys init|rotate|revoke|sign|publish|show` through the real entry point: each version written
into the feed only when boards would take it (host_tools.trust.check_keys), one-line errors and non-zero
exits otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli, fails

from host_tools.keydoc import KeysDoc
from host_tools.keys import load_public_key
from host_tools.trust import check_keys


@pytest.fixture
def work(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name, role in (("ra", "root"), ("rb", "root"), ("rc", "root"), ("rel", "release"), ("ro", "rollout"),
                       ("ro2", "rollout"), ("rel2", "release")):
        assert cli(capsys, "keygen", name, "--role", role)[0] == 0
    return tmp_path


def init(capsys: pytest.CaptureFixture[str], *signers: str) -> tuple[int, str, str]:
    args = ["keys", "init", "--feed", "feed", "--fleet", "acme", "--root", "ra.pub", "--root", "rb.pub",
            "--root", "rc.pub", "--root-threshold", "2", "--release", "rel.pub", "--rollout", "ro.pub"]
    for s in signers:
        args += ["--key", s]
    return cli(capsys, *args)


def hexof(path: str) -> str:
    return load_public_key(path).public_hex


def test_init_rotate_revoke_show(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys,
          "not signed by 2 of its own root keys", *["keys", "init", "--feed", "feed", "--fleet", "acme",
          "--root", "ra.pub", "--root", "rb.pub", "--root-threshold", "2", "--release", "rel.pub",
          "--rollout", "ro.pub", "--key", "ra"])
    assert not (work / "feed" / "keys" / "1.json").exists()
    code, out, _ = init(capsys, "ra", "rb")
    assert code == 0 and "keys version 1 of fleet acme" in out
    v1 = KeysDoc.from_envelope_unverified((work / "feed/keys/1.json").read_bytes())
    assert v1.role("root").threshold == 2 and v1.role("rollout").keys == [hexof("ro.pub")]
    fails(capsys,
          "next keys version is 2", *["keys", "init", "--feed", "feed", "--fleet", "acme", "--root",
          "ra.pub", "--release", "rel.pub", "--rollout", "ro.pub", "--key", "ra"])

    # rotate the rollout key: one root signature is below the threshold, two pass
    fails(capsys,
          r"boards would refuse keys v2: .*1 valid of 2", "keys", "rotate", "--feed", "feed", "--role",
          "rollout", "--add", "ro2.pub", "--remove", "ro.pub", "--key", "ra")
    fails(capsys,
          r"1 valid of 2", "keys", "rotate", "--feed", "feed", "--role",
          "rollout", "--add", "ro2.pub", "--remove", "ro.pub", "--key", "ra", "--key", "ra")
    assert not (work / "feed/keys/2.json").exists()
    assert cli(capsys, "keys", "rotate", "--feed", "feed", "--role", "rollout", "--add", "ro2.pub",
               "--remove", "ro.pub", "--key", "ra", "--key", "rc")[0] == 0
    v2 = check_keys((work / "feed/keys/2.json").read_bytes(), v1)
    assert v2.role("rollout").keys == [hexof("ro2.pub")]

    # a release key and its 2-of-2 threshold, then revoke one (the threshold must come down first)
    assert cli(capsys, "keys", "rotate", "--feed", "feed", "--role", "release", "--add", "rel2.pub",
               "--threshold", "2", "--key", "ra", "--key", "rb")[0] == 0
    fails(capsys,
          "threshold 2 over the role's 1 keys", "keys", "revoke", "--feed", "feed", "rel.pub",
          "--key", "ra", "--key", "rb")
    assert cli(capsys, "keys", "rotate", "--feed", "feed", "--role", "release", "--threshold", "1",
               "--key", "ra", "--key", "rb")[0] == 0
    assert cli(capsys, "keys", "revoke", "--feed", "feed", "rel.pub", "--key", "ra", "--key", "rb")[0] == 0
    fails(capsys,
          "is in no role", "keys", "revoke", "--feed", "feed", "rel.pub", "--key", "ra", "--key", "rb")

    # revoke a root key: the new root (2 of 2) must sign too, so the revoked key's signature cannot help
    fails(capsys,
          r"boards would refuse keys v6: .*new root", "keys", "revoke", "--feed", "feed", "rc.pub",
          "--key", "ra", "--key", "rc")
    assert cli(capsys, "keys", "revoke", "--feed", "feed", "rc.pub", "--key", "ra", "--key", "rb")[0] == 0

    code, out, _ = cli(capsys, "keys", "show", "--feed", "feed", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["version"] == 6 and shown["roles"]["root"]["threshold"] == 2
    assert shown["roles"]["root"]["keys"] == [hexof("ra.pub"), hexof("rb.pub")]
    assert shown["roles"]["release"]["keys"] == [hexof("rel2.pub")]
    # every version follows from the one before, as a board walks them
    trusted = v1
    for v in range(2, 7):
        trusted = check_keys((work / f"feed/keys/{v}.json").read_bytes(), trusted)
    assert trusted.version == 6


def test_legacy_boards_need_a_release_signature(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["keys", "init", "--feed", "feed", "--fleet", "acme", "--root", "ra.pub", "--release", "rel.pub",
            "--rollout", "ro.pub", "--legacy-release", "rel.pub", "--key", "ra"]
    fails(capsys,
          "bare key lists would refuse keys v1 .sign it with one of their release", *base)
    assert cli(capsys, *base, "--key", "rel")[0] == 0
    legacy = KeysDoc.legacy([hexof("rel.pub")], [hexof("ro.pub")])
    assert check_keys((work / "feed/keys/1.json").read_bytes(), legacy).version == 1


def test_bad_inputs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys,
          "no keys document yet", "keys", "rotate", "--feed", "feed", "--role", "rollout", "--add",
          "ro2.pub", "--key", "ra")
    fails(capsys,
          "has no keys document", "keys", "show", "--feed", "feed")
    fails(capsys,
          "threshold must be an integer in 1..1", *["keys", "init", "--feed", "feed", "--fleet", "acme",
          "--root", "ra.pub", "--root-threshold", "2", "--release", "rel.pub", "--rollout", "ro.pub",
          "--key", "ra"])
    fails(capsys,
          "fleet", *["keys", "init", "--feed", "feed", "--fleet", "no spaces", "--root", "ra.pub",
          "--release", "rel.pub", "--rollout", "ro.pub", "--key", "ra"])
    fails(capsys,
          "same key twice", *["keys", "init", "--feed", "feed", "--fleet", "acme", "--root", "ra.pub",
          "--root", "ra.pub", "--release", "rel.pub", "--rollout", "ro.pub", "--key", "ra"])
    assert init(capsys, "ra", "rb")[0] == 0
    fails(capsys,
          "nothing to change", "keys", "rotate", "--feed", "feed", "--role", "rollout", "--key", "ra")
    fails(capsys,
          "already listed", "keys", "rotate", "--feed", "feed", "--role", "rollout", "--add", "ro.pub",
          "--key", "ra", "--key", "rb")
    fails(capsys,
          "at least one key", "keys", "rotate", "--feed", "feed", "--role", "rollout", "--remove",
          "ro.pub", "--key", "ra", "--key", "rb")
    fails(capsys,
          "only a public key", "keys", "rotate", "--feed", "feed", "--role", "rollout", "--add",
          "ro2.pub", "--key", "ra.pub")
    # a tampered file in the feed: the chain check refuses to build on it
    (work / "feed/keys/2.json").write_text("{}")
    fails(capsys,
          "keys/2.json", "keys", "show", "--feed", "feed")
    (work / "feed/keys/2.json").unlink()
    (work / "feed/keys/3.json").write_text("{}")
    fails(capsys,
          r"versions \[1, 3\]", "keys", "show", "--feed", "feed")
    fails(capsys,
          "give a keys document FILE or --feed", "keys", "show")


def test_sign_with_two_keys_and_cosign(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from host_tools.imagebuild import build_app_image

    Path("app.bin").write_bytes(build_app_image("esp32", "1.0.0", "app", 0, code=bytes(20000)))
    sign = ["sign", "app.bin", "--board", "esp32-generic-4mb", "--version", "1.0.0"]
    code, out, err = cli(capsys, *sign, "--key", "rel", "--key", "rel2", "--out", "r1")
    assert code == 0, err
    assert "keys " in out
    verify = ["verify", "--pubkey", "rel.pub", "--pubkey", "rel2.pub", "--threshold", "2"]
    assert cli(capsys, *verify, "r1")[0] == 0
    assert cli(capsys, *sign, "--key", "rel", "--out", "r2")[0] == 0
    fails(capsys, r"1 valid of 2", *verify, "r2")
    code, out, _ = cli(capsys, "cosign", "r2", "--key", "rel2")
    assert code == 0 and "cosigned" in out
    assert cli(capsys, *verify, "r2")[0] == 0
    sigs = json.loads((work / "r2" / "manifest.json").read_text())["signatures"]
    assert [s["keyid"] for s in sigs] == [load_public_key("rel.pub").keyid, load_public_key("rel2.pub").keyid]
    fails(capsys, "already signed by", "cosign", "r2", "--key", "rel2")
    fails(capsys, "needs a release key", "cosign", "r2", "--key", "ro")
    fails(capsys, "release nowhere not found", "cosign", "nowhere", "--key", "rel2")
    (work / "r2" / "firmware.bin").write_bytes(b"x")  # a release that no longer holds together
    fails(capsys, "firmware.bin is 1 bytes", "cosign", "r2", "--key", "ra", "--any-role")


def test_root_signatures_added_on_other_machines(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert init(capsys, "ra", "rb")[0] == 0
    assert cli(capsys, "keygen", "rd", "--role", "root")[0] == 0
    # a root change (rb and rc out, rd in; 2 of 2 now): written on ra's machine into a file, signed by ra
    code, out, err = cli(capsys, "keys", "rotate", "--feed", "feed", "--role", "root", "--remove", "rb.pub",
                         "--remove", "rc.pub", "--add", "rd.pub", "--key", "ra", "--out", "v2.json")
    assert code == 0, err
    assert "not yet: " in out and "mpota keys sign" in out
    assert not (work / "feed/keys/2.json").exists()
    fails(capsys, r"boards would refuse keys v2: .*1 valid of 2", "keys", "publish", "v2.json",
          "--feed", "feed")
    # only a root key of v2, or of v1 (the version before, from the feed), may sign
    fails(capsys, r"rel.* is not a root key of keys v2 or of v1", "keys", "sign", "v2.json", "--key", "rel",
          "--feed", "feed")
    fails(capsys, r"rc.* is not a root key of keys v2 \(--feed", "keys", "sign", "v2.json",
          "--key", "rc")
    fails(capsys, "already signed by", "keys", "sign", "v2.json", "--key", "ra")
    # rb's machine: the old root's threshold is met, the new root's not yet
    code, out, _ = cli(capsys, "keys", "sign", "v2.json", "--key", "rb", "--feed", "feed")
    assert code == 0 and "not yet: " in out and "new root" in out, out
    # rd's machine (a key of the new root: no feed needed)
    code, out, _ = cli(capsys, "keys", "sign", "v2.json", "--key", "rd", "--json")
    assert code == 0 and len(json.loads(out)["signed_by"]) == 3
    code, out, _ = cli(capsys, "keys", "sign", "v2.json", "--key", "rc", "--feed", "feed")
    assert code == 0 and "boards would take it now" in out
    code, out, err = cli(capsys, "keys", "publish", "v2.json", "--feed", "feed")
    assert code == 0 and "wrote feed/keys/2.json" in out, err
    v1 = KeysDoc.from_envelope_unverified((work / "feed/keys/1.json").read_bytes())
    v2 = check_keys((work / "feed/keys/2.json").read_bytes(), v1)
    assert v2.role("root").keys == [hexof("ra.pub"), hexof("rd.pub")]
    fails(capsys, "next keys version is 3", "keys", "publish", "v2.json", "--feed", "feed")
    fails(capsys, "not JSON", "keys", "sign", "ra.pub", "--key", "ra")
