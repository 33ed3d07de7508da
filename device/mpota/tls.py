# https for mpota.http: the server's certificate always verified, against the config's tls_ca
# (one PEM certificate: the CA, or the server's own self-signed one, which pins it). A module of
# its own so boards that never use https do not keep this code in RAM.
from mpota.errors import DownloadError


# The DER bytes of the first certificate in a PEM text (mbedtls takes DER).
def _der(pem):
    import binascii

    i = pem.find("-----BEGIN CERTIFICATE-----")
    j = pem.find("-----END CERTIFICATE-----", i + 1)
    if i < 0 or j < 0:
        raise DownloadError("tls", "tls_ca is not a PEM certificate")
    try:
        return binascii.a2b_base64(pem[i + 27 : j].replace("\n", "").replace("\r", ""))
    except ValueError:
        raise DownloadError("tls", "tls_ca is not a PEM certificate")


# Wrap a connected socket in TLS, verifying the chain and the host name against `ca` (the
# config's tls_ca PEM text, or None). Errors: DownloadError tls here, ValueError/OSError from ssl
# (mpota.http turns those into DownloadError tls / download).
def wrap(s, host, ca):
    import ssl

    if hasattr(ssl, "create_default_context"):  # CPython: tls_ca, else the system's CAs
        return ssl.create_default_context(cadata=ca).wrap_socket(s, server_hostname=host)
    if ca is None:  # a board has no CA store: nothing to verify against
        raise DownloadError("tls", "https needs tls_ca in the config (the server's CA or certificate)")
    if not hasattr(ssl, "SSLContext"):
        raise DownloadError("tls", "this MicroPython's ssl cannot verify certificates (needs ssl.SSLContext)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]  # the default is CERT_NONE
    ctx.load_verify_locations(cadata=_der(ca))
    return ctx.wrap_socket(s, server_hostname=host)
