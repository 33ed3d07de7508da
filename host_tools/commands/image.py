"""`mpota image info|extract-app`: inspect ESP32 firmware images (our own parser, not esptool)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from host_tools.commands._options import actions
from host_tools.esp_image import (
    ImageError,
    ImageReport,
    extract_app,
    inspect_image,
    read_image_file,
    rev_text,
)
from host_tools.fsutil import atomic_write


def register(sub: Any) -> None:
    isub = actions(sub, "image", "inspect ESP32 firmware images", "Inspect ESP32 firmware images.")
    info = isub.add_parser(
        "info", help="show and validate an app image or a combined flash image",
        description="Parse an ESP32 image: header, extended header (chip, revisions), segments, checksum, "
                    "appended SHA-256 and esp_app_desc_t (version, project, secure_version), with findings "
                    "in plain language. A combined flash image (bootloader + partition table + app, like "
                    "MicroPython's firmware.bin for `esptool write-flash 0x1000`) is recognised and the app "
                    "to sign is named. Exits 1 when the image has errors.")
    info.add_argument("image", metavar="IMAGE|RELEASE_DIR",
                      help="an image file, or a release folder: its firmware image and app bundle (hashes "
                           "checked, signature not: see `mpota verify`)")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.set_defaults(func=cmd_info)

    ex = isub.add_parser(
        "extract-app", help="write the app image out of a combined flash image",
        description="Write the app image (exactly its bytes, hash included) found at the ota_0/factory "
                    "partition of a combined flash image. That file is what `mpota sign` takes.")
    ex.add_argument("image", metavar="COMBINED")
    ex.add_argument("--out", "-o", required=True, metavar="APP.bin")
    ex.add_argument("--force", action="store_true", help="replace --out if it exists")
    ex.set_defaults(func=cmd_extract)


def _hex(v: int | None) -> str:
    return "?" if v is None else f"0x{v:08x}"


def _app_lines(rep: ImageReport, indent: str = "") -> list[str]:
    out: list[str] = []
    rev = ""
    if rep.min_chip_rev_full is not None and rep.max_chip_rev_full is not None:
        rev = f", chip revision {rev_text(rep.min_chip_rev_full)} .. {rev_text(rep.max_chip_rev_full)}"
    out.append(f"{indent}chip:       {rep.chip or '?'} (chip id {rep.chip_id}){rev}")
    out.append(f"{indent}header:     magic 0xE9, {rep.segment_count} segments, flash {rep.flash_mode} "
               f"{rep.flash_size} {rep.flash_freq}, entry {_hex(rep.entry)}")
    if rep.image_length is not None:
        out.append(f"{indent}length:     {rep.image_length} bytes")
    cks = {True: "valid", False: "INVALID", None: "not reached"}[rep.checksum_valid]
    out.append(f"{indent}checksum:   {cks}")
    if rep.hash_appended:
        sha = {True: f"valid ({rep.sha256})", False: "INVALID", None: "not reached"}[rep.sha256_valid]
    else:
        sha = "none appended"
    out.append(f"{indent}sha256:     {sha}")
    if rep.segments:
        out.append(f"{indent}segments:   #  load addr   length    data off  memory")
        for s in rep.segments:
            out.append(f"{indent}            {s.index:<2} {_hex(s.load_addr)}  {s.length:<9} "
                       f"0x{s.file_offset:<7x} {s.memory}")
    d = rep.app_desc
    if d is not None:
        out.append(f"{indent}app:        {d.project_name} {d.version}, secure_version {d.secure_version}")
        out.append(f"{indent}built:      {d.date} {d.time}, ESP-IDF {d.idf_ver}")
        out.append(f"{indent}elf sha256: {d.app_elf_sha256}")
    return out


def format_report(name: str, rep: ImageReport) -> str:
    kinds = {"app": "app image", "bootloader": "bootloader (not an app)", "combined": "combined flash image",
             "invalid": "invalid image"}
    lines = [f"file:       {name} ({rep.file_size} bytes)", f"kind:       {kinds.get(rep.kind, rep.kind)}"]
    if rep.kind == "combined":
        lines.append(f"layout:     write at 0x{rep.flash_offset or 0:x}; bootloader at "
                     f"0x{rep.bootloader_offset or 0:x}; partition table at "
                     f"0x{rep.partition_table_offset or 0:x}; app in {rep.app_partition or '?'} at "
                     f"0x{rep.app_flash_offset or 0:x}")
        if rep.partitions:
            lines.append("partitions: " + ", ".join(f"{p.label}@0x{p.offset:x}" for p in rep.partitions))
        if rep.app is not None:
            lines.append("app image inside:")
            lines += _app_lines(rep.app, "  ")
    elif rep.kind != "invalid" or rep.segment_count is not None:
        lines += _app_lines(rep)
    if rep.findings:
        lines.append("findings:")
        lines += [f"  {f.level}: {f.message}" for f in rep.findings]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    if Path(args.image).is_dir():
        return _release_info(args)
    data = read_image_file(args.image)
    rep = inspect_image(data)
    if rep.kind == "invalid" and rep.segment_count is None and not args.json:
        raise ImageError(f"{args.image}: {rep.errors[0]}")
    if args.json:
        print(json.dumps({"file": args.image, **rep.to_dict()}, indent=2))
    else:
        print(format_report(args.image, rep))
    if rep.errors:
        raise ImageError(f"{args.image}: {rep.errors[0]}")
    return 0


def _release_info(args: argparse.Namespace) -> int:
    from host_tools.appbundle import app_lines
    from host_tools.release import load_release, release_image

    res = load_release(args.image, None, allow_expired=True)[0]
    m = res.manifest
    rep = inspect_image(release_image(args.image)[1]) if m.image is not None else None
    if args.json:
        print(json.dumps({"release": args.image, "version": m.version, "checks": res.checks,
                          "image": None if rep is None else rep.to_dict(),
                          "app": None if m.app is None else m.app.to_dict()}, indent=2))
        return 0
    print(f"release {m.version} ({m.chip}, {', '.join(m.target_hardware)})")
    if rep is None:
        print("image: none (an app-only release)")
    else:
        assert res.image_path is not None
        print(format_report(str(res.image_path), rep))
    for line in app_lines(m.app):
        print(line)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ImageError(f"{out} already exists (use --force to replace it)")
    app, rep = extract_app(read_image_file(args.image), args.image)
    atomic_write(out, app)
    d = rep.app_desc
    what = f"{d.project_name} {d.version}, " if d else ""
    print(f"wrote {out}: {rep.chip} app image, {what}{len(app)} bytes")
    return 0
