# Which firmware runs: its version as the updater compares it and reports carry it. Loaded
# when needed and unloaded after (the updater keeps it out of RAM during a transfer).
#
# The version comes from, in order: the running image's esp_app_desc_t; what mpota recorded
# when it confirmed this very build in this slot (state["fw"]), or the pending update's
# version on its trial boot; the factory version the
# config states (`version`, written by `mpota deploy`; for the build `version_elf` names when
# given); else it is unknown (None) and the updater matches the running image's SHA-256
# against the signed manifest it is offered. MicroPython's own ESP32 builds leave the app
# description's version empty (CONFIG_APP_EXCLUDE_PROJECT_VER_VAR=y): for them a build is
# told apart by app_elf_sha256, which esptool writes into every image.
from micropython import const

_DESC = const(0x20)      # esp_app_desc_t in an app image
_DESC_END = const(0xD0)  # ... up to the end of app_elf_sha256 (desc + 144 + 32)


# (version, elf id, chip id, slot label) of the running image, or None when the running slot
# holds no readable app description. version "" for a build without one; the elf id is the
# first 8 bytes of app_elf_sha256 in hex.
def running_image():
    try:
        import binascii

        import esp32

        run = esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]
        buf = bytearray(_DESC_END)
        run.readblocks(0, buf)
        if buf[0] != 0xE9 or buf[_DESC:_DESC + 4] != b"\x32\x54\xcd\xab":
            return None
        raw = bytes(buf[_DESC + 16:_DESC + 48])
        n = raw.find(b"\0")
        try:
            v = str(raw if n < 0 else raw[:n], "utf-8")
        except Exception:  # not UTF-8: no usable version
            v = ""
        elf = str(binascii.hexlify(buf[_DESC + 144:_DESC + 152]), "ascii")
        return v, elf, buf[12] | buf[13] << 8, run.info()[4]
    except Exception:
        return None


# The running firmware's version (see above) or None; fw: running_image() when known.
def version(state, cfg, fw=-1):
    if fw == -1:
        fw = running_image()
    if fw is not None:
        if fw[0]:
            return fw[0]
        rec = state["fw"].get(fw[3])
        if rec and rec[0] == fw[1]:
            return rec[1]
        p = state["pending"]
        if p and p.get("slot") == fw[3] and p.get("phase") != "installing":
            return p.get("version")  # the trial boot of an installed update
    v = cfg.get("version")
    if not isinstance(v, str) or not v:
        return None
    want = cfg.get("version_elf")
    if isinstance(want, str) and want and (fw is None or want[:16].lower() != fw[1]):
        return None
    return v


# Remember `ver` as the version of the build fw (running_image()); the caller saves.
def record(state, fw, ver):
    if fw is not None and not fw[0]:
        state["fw"][fw[3]] = [fw[1], ver]


# True when the slot `part` holds exactly the signed image `img` (a manifest's "image"): how
# a board whose firmware carries no version learns that it runs a release. buf: 4096 bytes.
def runs(part, img, buf, feed):
    size = img["size"]
    if size > part.info()[3]:
        return False
    import mpota.slot as slot  # the read-back of a written image, here of the running one

    return slot.Writer(part, size, buf, None, feed).verify(img["hash"][7:])

