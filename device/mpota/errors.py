# Typed errors (after python-tuf's exceptions): one root for "the feed or its metadata is
# bad", one for "the transfer failed", one for "the flash refused". Each carries `code`,
# the reason code that goes into the `failed` report.


class OTAError(Exception):
    code = "error"


class MetadataError(OTAError):
    code = "metadata"


class DocumentTooLarge(MetadataError):
    code = "too_large"


class BadDocument(MetadataError):
    code = "malformed"


class SignatureError(MetadataError):
    code = "bad_signature"


class ReplayError(MetadataError):
    code = "replayed"


class ExpiredError(MetadataError):
    code = "expired"


class PinMismatch(MetadataError):
    code = "manifest_mismatch"


class NotForThisBoard(MetadataError):
    code = "wrong_target"


class SecurityVersionError(MetadataError):
    code = "security_version"


class NotNewer(MetadataError):
    code = "not_newer"


class TooBig(MetadataError):
    code = "too_big"


class IntegrityError(OTAError):
    # The bytes arrived but are not the signed ones (hash/size mismatch, bad header).
    code = "integrity"


class DownloadError(OTAError):
    code = "download"


class TLSError(DownloadError):
    # The server's certificate was refused (wrong CA, wrong name, no tls_ca to check it
    # against), or the report token would have crossed plain http.
    code = "tls"


class HTTPStatusError(DownloadError):
    code = "http_status"

    def __init__(self, status, msg=""):
        super().__init__("HTTP %d %s" % (status, msg))
        self.status = status


class DownloadTimeout(DownloadError):
    code = "timeout"


class FlashError(OTAError):
    code = "flash"


# Codes are the `detail.reason` of `failed` reports.


class ConfigError(OTAError):
    # /mpota.json missing or invalid: nothing can be checked or installed.
    code = "config"


class UnknownKey(SignatureError):
    # No signature carries the keyid of a configured key of the required role
    # (also what a document signed with the other role's key looks like).
    code = "unknown_key"


class PayloadTypeError(MetadataError):
    code = "payload_type"


class UpdatePending(OTAError):
    # An installed update awaits its trial boot; the other slot is the rollback target.
    code = "pending"


class HashMismatch(IntegrityError):
    code = "hash_mismatch"


class SizeMismatch(IntegrityError):
    # Truncated, or longer than the signed manifest declares.
    code = "size_mismatch"


class BadImage(IntegrityError):
    # The first block is not an ESP app image for this chip (early reject).
    code = "bad_image"


class BadPatch(IntegrityError):
    # a delta patch that does not rebuild the image (mpota.delta): the update falls back to the full image
    code = "bad_patch"
