"""Firmware manifest example: create_manifest and FirmwareManifest on the signed format.

Creates a release manifest for a firmware image, saves it as a signed DSSE envelope, loads it back
(verifying the signature with the release public key) and validates it; then shows that a tampered
manifest and an invalid field are refused. Run it from the repository root:

    .venv/bin/python examples/firmware_manifest_example.py [FIRMWARE.bin] [--keep DIR]

Without FIRMWARE.bin a genuine ESP32 app image is built for the demo.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from host_tools.errors import MpotaError
from host_tools.imagebuild import build_app_image
from host_tools.keys import generate_key, load_private_key, load_public_key
from host_tools.manifest import (
    FirmwareManifest,
    ManifestError,
    create_manifest,
    load_manifest,
    save_manifest,
)


def main(argv: list[str]) -> int:
    keep = None
    if "--keep" in argv:
        i = argv.index("--keep")
        keep = Path(argv[i + 1])
        del argv[i : i + 2]
    with tempfile.TemporaryDirectory(prefix="mpota-manifest-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        firmware = Path(argv[0]) if argv else work / "firmware.bin"
        if not argv:
            firmware.write_bytes(build_app_image("esp32", "1.2.3", "micropython", secure_version=4))

        # 1. Keys: the release key signs manifests (keep it offline); devices get the public hex.
        key_path = work / "release.pem"
        if not key_path.exists():
            generate_key(key_path, "release")
        key = load_private_key(key_path, expect_role="release")
        print(f"release key {key.keyid[:16]}..., public {key.public_hex[:20]}...")

        # 2. Create the manifest for the image (size and SHA-256 computed from the file).
        manifest = create_manifest(
            firmware,
            version="1.2.3",
            build_id="20261127-143022",
            security_version=4,
            target_hardware=["esp32-generic-4mb"],
            chip="esp32",
            min_bootloader_version="2.1.0",
            release_notes="Bug fixes and performance improvements",
            required=False,
            expires="2099-01-01T00:00:00Z",
        )
        img = manifest.image
        print(f"created manifest {manifest.version}: {img.size} bytes, {img.hash[:23]}...")

        # 3. Save it signed (a DSSE envelope, application/vnd.mpota.release+json).
        path = work / "manifest.json"
        save_manifest(manifest, path, key)
        print(f"saved {path} ({path.stat().st_size} bytes)")

        # 4. Load it back: the signature is verified with the public key, every field validated.
        loaded = load_manifest(path, [load_public_key(key.public_hex)])
        assert loaded == manifest
        loaded.validate()
        print(f"loaded and verified: version {loaded.version}, security_version {loaded.security_version}, "
              f"targets {', '.join(loaded.target_hardware)}, notes {loaded.metadata.release_notes!r}")

        # 5. A tampered manifest is refused ...
        env = json.loads(path.read_text())
        env["payload"] = env["payload"][:-8] + "AAAAAAA="
        bad = work / "tampered.json"
        bad.write_text(json.dumps(env))
        try:
            load_manifest(bad, [key.public])
            print("tampered manifest accepted?!")
            return 1
        except MpotaError as exc:
            print(f"tampered manifest refused: {exc}")

        # 6. ... and so is an invalid field.
        doc = manifest.to_dict()
        doc["image"]["hash"] = "md5:1234"
        try:
            FirmwareManifest.from_dict(doc)
            print("invalid manifest accepted?!")
            return 1
        except ManifestError as exc:
            print(f"invalid manifest refused: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
