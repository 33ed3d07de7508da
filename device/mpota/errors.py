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


class HTTPStatusError(DownloadError):
    code = "http_status"

    def __init__(self, status, msg=""):
        super().__init__("HTTP %d %s" % (status, msg))
        self.status = status


class DownloadTimeout(DownloadError):
    code = "timeout"


class FlashError(OTAError):
    code = "flash"
