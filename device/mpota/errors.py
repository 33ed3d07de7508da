# Typed errors (after python-tuf's exceptions): one root, one class per kind of failure
# ("the feed or its metadata is bad", "the bytes are not the signed ones", "the transfer
# failed", "the flash refused"). The precise verdict is the instance's `code`, the reason
# that goes into the `failed` report (docs/FORMATS.md lists them); a class per code would
# cost a type object each in RAM (~7 KB for two dozen on the unix port).
#
#   raise MetadataError("bad_signature", "bad signature")
#   except MetadataError as e: e.code == "bad_signature"
#
# Codes raised as OTAError itself: "config" (/mpota.json missing or invalid), "pending" (an
# installed update awaits its trial boot), "error" (anything unexpected, wrapped).


class OTAError(Exception):
    def __init__(self, code, msg=""):
        super().__init__(msg)
        self.code = code


# The feed or a document is bad: too_large, malformed, payload_type, unknown_key (no
# signature by a configured key of the role), bad_signature, replayed, expired,
# manifest_mismatch, wrong_target, security_version, not_newer, too_big.
class MetadataError(OTAError):
    pass


# The bytes arrived but are not the signed ones: hash_mismatch, size_mismatch (truncated, or
# longer than declared), bad_image (the first block is not an app image for this chip),
# bad_patch (a delta patch that does not rebuild the image: the update takes the full one).
class IntegrityError(OTAError):
    pass


# The transfer failed: download, timeout, tls (certificate refused, or the report token would
# cross plain http), http_status (with `status`, the HTTP status).
class DownloadError(OTAError):
    status = None


# The flash or the filesystem refused, or the slot reads back wrong: flash.
class FlashError(OTAError):
    pass


def http_status(status, msg=""):
    e = DownloadError("http_status", "HTTP %d %s" % (status, msg))
    e.status = status
    return e
