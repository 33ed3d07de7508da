# ESP app image checks on the first 4 KiB block (esp_image_header_t + extended header,
# then the first segment, which ESP-IDF starts with esp_app_desc_t). The running firmware's
# own app_desc is read by mpota.state.running_image().
from micropython import const

_MAGIC = const(0xE9)
_DESC_MAGIC = const(0xABCD5432)
_DESC = const(32)  # 24-byte header + 8-byte segment header
_MAX_SEGMENTS = const(16)

# extended-header chip ids (esp_chip_id_t)
CHIPS = {0: "esp32", 2: "esp32s2", 5: "esp32c3", 9: "esp32s3", 12: "esp32c2", 13: "esp32c6",
         16: "esp32h2", 18: "esp32p4", 20: "esp32c61", 23: "esp32c5"}


def _u32(b, i):
    return b[i] | b[i + 1] << 8 | b[i + 2] << 16 | b[i + 3] << 24


def chip_id(block):
    return block[12] | block[13] << 8


# Early reject: raises bad_image unless `block` (the image's first block) starts an app
# image for `want_chip` (an esp_chip_id_t) carrying an app_desc.
def check(block, want_chip):
    from mpota.errors import IntegrityError

    if len(block) < _DESC + 256 or block[0] != _MAGIC:
        raise IntegrityError("bad_image", "not an ESP app image (magic)")
    if not 1 <= block[1] <= _MAX_SEGMENTS:
        raise IntegrityError("bad_image", "bad segment count %d" % block[1])
    cid = chip_id(block)
    if want_chip is not None and cid != want_chip:
        raise IntegrityError("bad_image", "image is for chip id %d, this board is %d" % (cid, want_chip))
    if _u32(block, _DESC) != _DESC_MAGIC:
        raise IntegrityError("bad_image", "no app description")
