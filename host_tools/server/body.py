"""Request bodies, read and parsed the one strict way every route uses.

read_body: one size cap whatever the transfer encoding (a Content-Length above it is refused
before a byte is read; a chunked body is cut as soon as it passes it), a deadline for the whole
body, and a client that hangs up mid-body is reported as BodyError(None) (nothing to answer).
parse_json: UTF-8 only (no BOM, no UTF-16 guessing), no NaN/Infinity or numbers that overflow a
double, no lone surrogates, no NUL characters, nesting bounded (1024).
Every failure is a BodyError carrying the 4xx to answer and one line saying why.
"""

from __future__ import annotations

import asyncio

import orjson
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


def _holds_nul(obj: object) -> bool:
    if isinstance(obj, str):
        return "\x00" in obj
    if isinstance(obj, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_holds_nul(v) for v in obj)
    return False


def parse_json(body: bytes) -> object:
    """orjson (strict: UTF-8 only, no BOM, no NaN/Infinity, no lone surrogates, no number beyond
    a double, at most 1024 levels deep; several times faster than the json module), then the
    check it does not make: NUL. (It reads an integer beyond 64 bits as a float: routes bound
    their numbers.)"""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, _why(str(exc))) from None
    # NUL only comes from a \\u0000 escape (raw control bytes are not JSON): no database text holds it
    try:
        nul = b"\\u0000" in body and _holds_nul(obj)
    except RecursionError:
        nul = True
    if nul:
        raise BodyError(400, "body holds a NUL character")
    return obj


def _why(message: str) -> str:
    """One line saying what is wrong with a body orjson refused."""
    if "depth limit" in message:
        return "body nests too deeply"
    if "surrogate" in message:
        return "body holds a lone surrogate (not valid Unicode)"
    if "UTF-8" in message:
        return "body is not valid UTF-8"
    return f"body is not valid JSON ({message.splitlines()[0][:80]})"
