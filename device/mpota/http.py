# Streaming HTTP/1.1 client on sockets, shared by the updater and the reporter.
# One request per connection (Connection: close), Content-Length or chunked bodies,
# bounded redirects, capped status/header lines, connect and read timeouts via
# settimeout. https imports ssl lazily and always verifies the server's certificate.
# Errors are mpota.errors.DownloadError (codes download, timeout, tls, http_status).
import socket
import sys

from micropython import const

from mpota.errors import DownloadError, http_status

_LINE_MAX = const(256)      # one status line or header line kept (longer headers are skipped)
_HEAD_MAX = const(8192)     # all header lines together
_REDIRECTS = (301, 302, 303, 307, 308)
_CPYTHON = sys.implementation.name != "micropython"

# This device's transport policy, from /mpota.json (trust() is called by mpota.config and the
# report outbox): tls_ca, the PEM certificate an https server must chain to (a CA, or the
# server's own self-signed certificate, which pins it); allow_http, whether a request carrying
# the report token (Authorization) may go over plain http (lab and demo only). Kept on the
# package, not here: the updater unloads this module between phases to free its RAM.
def trust(cfg):
    import mpota

    ca = cfg.get("tls_ca")
    mpota._trust = (ca if isinstance(ca, str) and ca else None, cfg.get("allow_http") is True)


def _policy():
    import mpota

    return getattr(mpota, "_trust", None) or (None, False)


# (tls, host, port, path) of an http(s) URL.
def split(url):
    if url.startswith("http://"):
        tls, rest, port = False, url[7:], 80
    elif url.startswith("https://"):
        tls, rest, port = True, url[8:], 443
    else:
        raise DownloadError("download", "unsupported URL " + url[:40])
    i = rest.find("/")
    host, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    i = host.rfind(":")
    if i > 0 and host[i + 1 :].isdigit():
        port = int(host[i + 1 :])
        host = host[:i]
    if not host:
        raise DownloadError("download", "URL without host")
    return tls, host, port, path


# Resolve `ref` against `base` (absolute URL, absolute path or a relative path).
def join(base, ref):
    if "://" in ref:
        return ref
    i = base.find("://")
    if ref.startswith("/"):
        j = base.find("/", i + 3)
        return (base if j < 0 else base[:j]) + ref
    base = base.split("?", 1)[0]
    j = base.rfind("/")
    if j < i + 3:
        return base + "/" + ref
    return base[: j + 1] + ref


def _neterr(e):
    if isinstance(e, DownloadError):
        return e
    code = e.args[0] if e.args else 0
    if code in (11, 110, 116) or "timed out" in str(e):
        return DownloadError("timeout", "timed out")
    return DownloadError("download", "network error %s" % (code or e))


class Response:
    def __init__(self, sock, stream):
        self._sock = sock
        self._f = stream  # readinto/readline object (the socket itself on MicroPython)
        self.status = 0
        self.headers = {}
        self.length = None
        self._left = None     # body bytes still expected (Content-Length / current chunk)
        self._chunked = False
        self._done = False
        self._total = 0

    # One line of at most _LINE_MAX bytes (readline(n) allocates n bytes up front); the
    # rest of a longer line is read and dropped, and None returned. _total caps the head.
    def _line(self):
        ln = self._read_line()
        if ln.endswith(b"\n"):
            return ln
        while not ln.endswith(b"\n"):
            ln = self._read_line()
        return None

    def _read_line(self):
        try:
            ln = self._f.readline(_LINE_MAX)
        except OSError as e:
            raise _neterr(e)
        if not ln:
            raise DownloadError("download", "connection closed in headers")
        self._total += len(ln)
        if self._total > _HEAD_MAX:
            raise DownloadError("download", "headers too large")
        return ln

    def _head(self, method):
        self._total = 0
        ln = self._line()
        if ln is None:
            raise DownloadError("download", "status line too long")
        parts = ln.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise DownloadError("download", "not an HTTP response")
        self.status = int(parts[1])
        while True:
            ln = self._line()
            if ln is None:
                continue  # an overlong header (cookies, policies): not one we need
            if ln in (b"\r\n", b"\n"):
                break
            i = ln.find(b":")
            if i <= 0:
                raise DownloadError("download", "bad header line")
            try:
                self.headers[str(ln[:i].strip(), "utf-8").lower()] = str(ln[i + 1 :].strip(), "utf-8")
            except ValueError:  # UnicodeError
                raise DownloadError("download", "bad header line")
        te = self.headers.get("transfer-encoding", "").lower()
        if method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            self._left = 0
            return
        if te and te != "identity":
            if te != "chunked":
                raise DownloadError("download", "unsupported transfer-encoding")
            self._chunked = True
            self._left = 0
            return
        cl = self.headers.get("content-length")
        if cl is not None:
            if not cl.isdigit():
                raise DownloadError("download", "bad content-length")
            self.length = self._left = int(cl)

    def _chunk(self):
        # at a chunk boundary: read "<hex size>[;ext]\r\n" (after the previous chunk's CRLF)
        if self._done:
            return 0
        self._total = 0
        ln = self._line()
        if ln in (b"\r\n", b"\n"):
            ln = self._line()
        if ln is None:
            raise DownloadError("download", "bad chunk size")
        try:
            n = int(ln.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise DownloadError("download", "bad chunk size")
        if n == 0:
            self._done = True  # trailers are not read; the connection closes
        self._left = n
        return n

    # Read up to len(buf) body bytes into buf; 0 at the end of the body. A body that ends
    # before its declared length raises DownloadError (the caller may resume with Range).
    def readinto(self, buf):
        left = self._left
        if left is not None:
            if left == 0:
                if not self._chunked or not self._chunk():
                    return 0
                left = self._left or 0
            if len(buf) > left:
                buf = memoryview(buf)[:left]
        try:
            n = self._f.readinto(buf)
        except OSError as e:
            raise _neterr(e)
        if not n:
            if left is None:
                return 0
            raise DownloadError("download", "connection closed early")
        if left is not None:
            self._left = left - n
        return n

    # Raise DownloadError http_status unless the status is one of `ok` (closes the connection).
    def expect(self, *ok):
        if self.status not in ok:
            self.close()
            raise http_status(self.status)
        return self

    def close(self):
        s = self._sock
        if s is not None:
            self._sock = None
            try:
                if self._f is not s:
                    self._f.close()
                s.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def _connect(tls, host, port, timeout_ms):
    try:
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    except OSError as e:
        raise DownloadError("download", "cannot resolve %s (%s)" % (host, e))
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    try:
        s.settimeout(timeout_ms / 1000)
        s.connect(ai[-1])
        if not tls:
            return s
        from mpota.tls import wrap  # only boards that use https load it

        return wrap(s, host, _policy()[0])
    except OSError as e:
        s.close()
        why = getattr(e, "verify_message", None)  # CPython's SSLCertVerificationError
        if why:
            raise DownloadError("tls", "server certificate refused: %s" % why)
        raise _neterr(e)
    except ValueError as e:  # mbedtls: bad certificate, wrong name
        s.close()
        raise DownloadError("tls", "server certificate refused: %s" % str(e).strip())
    except DownloadError:  # tls.wrap refused
        s.close()
        raise


def _request(method, url, headers, body, timeout_ms):
    tls, host, port, path = split(url)
    if not tls and headers and "Authorization" in headers and not _policy()[1]:
        raise DownloadError("tls", "refusing to send the report token over plain http (use an "
                            "https report_url, or allow_http in the config for a lab)")
    s = _connect(tls, host, port, timeout_ms)
    try:
        if (tls and port != 443) or (not tls and port != 80):
            host = "%s:%d" % (host, port)
        req = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: mpota\r\n" % (
            method, path, host)
        if headers:
            for k in headers:
                req += "%s: %s\r\n" % (k, headers[k])
        if body is not None:
            if isinstance(body, str):
                body = body.encode()
            req += "Content-Length: %d\r\n" % len(body)
        req += "\r\n"
        w = getattr(s, "write", None)
        if w is None or _CPYTHON:  # CPython: bytes only (its TLS sockets' write too)
            s.sendall(req.encode())
            w = s.sendall
        else:  # MicroPython streams write a str as is: no bytes copy of the head
            w(req)
        del req
        if body:
            w(body)
        # MicroPython sockets have readline/readinto; CPython's need a file wrapper
        f = s if hasattr(s, "readinto") else s.makefile("rb", 0)
        r = Response(s, f)
        r._head(method)
        return r
    except BaseException as e:
        s.close()
        if isinstance(e, OSError):
            raise _neterr(e)
        raise


# Open `url` and read the status and headers; the body is read with resp.readinto().
# Follows up to `max_redirects` redirects. The caller closes the response.
def open(url, method="GET", headers=None, body=None, timeout_ms=10000, max_redirects=3):
    while True:
        r = _request(method, url, headers, body, timeout_ms)
        if r.status not in _REDIRECTS:
            return r
        loc = r.headers.get("location")
        r.close()
        if not loc:
            raise DownloadError("download", "redirect without location")
        if max_redirects <= 0:
            raise DownloadError("download", "too many redirects")
        max_redirects -= 1
        new = join(url, loc)
        if headers and "Authorization" in headers and split(new)[:3] != split(url)[:3]:
            # the token is for the server it was configured for, never for another origin
            headers = {k: headers[k] for k in headers if k != "Authorization"}
        url = new
        if r.status == 303:
            method, body = "GET", None


# A whole response body (a signed document), never more than cap + 1 bytes; `h` (a hashlib
# object) sees every byte. Here rather than in mpota.dsse, so that dsse is not in RAM while a
# document downloads. `into`: a buffer to read a document of known length into when it fits,
# returned whole with the rest filled with spaces (JSON whitespace: it parses as the document),
# so no buffer is made for it (the keys walk reuses one).
def read_capped(resp, cap, h=None, into=None):
    from mpota.errors import MetadataError

    n = resp.length
    if n is not None:
        # known length: read straight into a buffer of that size (no copies, no regrowth)
        if n > cap:
            raise MetadataError("too_large", "document of %d bytes (cap %d)" % (n, cap))
        out = into if into is not None and n <= len(into) else bytearray(n)
        mv = memoryview(out)
        got = 0
        while got < n:
            k = resp.readinto(mv[got:n])
            if not k:
                break
            got += k
        if h is not None:
            h.update(mv[:got])
        if out is into:
            for i in range(got, len(out)):
                out[i] = 32
            return out
        return out if got == n else out[:got]
    out = bytearray()
    mv = memoryview(bytearray(_LINE_MAX))
    while True:
        room = cap + 1 - len(out)
        k = resp.readinto(mv[: min(room, len(mv))])
        if not k:
            return out
        out.extend(mv[:k])
        if h is not None:
            h.update(mv[:k])
        if len(out) > cap:
            raise MetadataError("too_large", "document larger than %d bytes" % cap)
