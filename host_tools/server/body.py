"""Request bodies, read and parsed the one strict way every route uses.

read_body: one size cap whatever the transfer encoding (a Content-Length above it is refused
before a byte is read; a chunked body is cut as soon as it passes it), a deadline for the whole
body, and a client that hangs up mid-body is reported as BodyError(None) (nothing to answer).
parse_json: UTF-8 only (no BOM, no UTF-16 guessing), no NaN/Infinity or numbers that overflow a
double, no lone surrogates, no NUL characters, nesting bounded by the parser's recursion limit.
Every failure is a BodyError carrying the 4xx to answer and one line saying why.
"""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

BODY_TIMEOUT = 20.0  # seconds for a whole request body (the largest is 64 KB)


class BodyError(Exception):
    """A body that cannot be used: status is the 4xx to answer (None: the client hung up)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: web.Request, cap: int, timeout: float = BODY_TIMEOUT) -> bytes:
    length = request.content_length
    if length is not None and length > cap:
        raise BodyError(413, f"body larger than {cap} bytes")
    if length is not None and request.content.is_eof():  # all there already (the usual report)
        return await request.read()
    try:
        async with asyncio.timeout(timeout):
            if length is not None:
                return await request.read()
            data = bytearray()
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    return bytes(data)
                data += chunk
                if len(data) > cap:
                    raise BodyError(413, f"body larger than {cap} bytes")
    except TimeoutError:
        raise BodyError(408, f"body not received within {timeout:g} s") from None
    except (ConnectionError, ClientPayloadError, HttpProcessingError) as exc:
        raise BodyError(None, f"client hung up mid-body ({type(exc).__name__})") from None


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0:  # inf (1e400) or nan
        raise ValueError("number out of range")
    return value


def _constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_constant)
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _holds_nul(obj: object) -> bool:
    if isinstance(obj, str):
        return "\x00" in obj
    if isinstance(obj, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_holds_nul(v) for v in obj)
    return False


def parse_json(body: bytes) -> object:
    try:
        obj = _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BodyError(400, "body is not valid UTF-8") from None
    except RecursionError:
        raise BodyError(400, "body nests too deeply") from None
    except ValueError as exc:
        raise BodyError(400, f"body is not valid JSON ({str(exc)[:80]})") from None
    # NUL only comes from a \\u0000 escape (raw control bytes are not JSON): no database text holds it
    try:
        nul = b"\\u0000" in body and _holds_nul(obj)
    except RecursionError:
        nul = True
    if nul:
        raise BodyError(400, "body holds a NUL character")
    # lone surrogates only come from \\uD8xx escapes: the full check runs only when one is there
    if _ESCAPED_SURROGATE.search(body):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise BodyError(400, "body holds a lone surrogate (not valid Unicode)") from None
    return obj
