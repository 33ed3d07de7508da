"""The operator side of the server API (used by `mpota rollout` and `mpota devices`): stdlib HTTP."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any

from host_tools.errors import MpotaError
from host_tools.fleet import load_secret
from host_tools.server.auth import operator_token

DEFAULT_SERVER = "http://127.0.0.1:8080"


class ClientError(MpotaError):
    pass


def resolve_token(token: str | None, secret_path: str | None) -> str:
    """--token, else MPOTA_OPERATOR_TOKEN, else derived from --fleet-secret / MPOTA_FLEET_SECRET."""
    token = token or os.environ.get("MPOTA_OPERATOR_TOKEN")
    if token:
        return token
    secret_path = secret_path or os.environ.get("MPOTA_FLEET_SECRET")
    if not secret_path:
        raise ClientError("no operator credentials: give --fleet-secret PATH or --token TOKEN "
                          "(or set MPOTA_FLEET_SECRET / MPOTA_OPERATOR_TOKEN)")
    return operator_token(load_secret(secret_path))


class ServerClient:
    def __init__(self, base_url: str | None, token: str, timeout: float = 30.0) -> None:
        self.base = (base_url or os.environ.get("MPOTA_SERVER") or DEFAULT_SERVER).rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            raise ClientError(f"server URL {self.base!r} must start with http:// or https://")
        self.token = token
        self.timeout = timeout
        # an https server with a private CA: MPOTA_TLS_CA=ca.pem (else the system's CAs)
        ca = os.environ.get("MPOTA_TLS_CA")
        self.context = ssl.create_default_context(cafile=ca) if ca and self.base.startswith("https") else None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer; an answer of 400 or above is a ClientError with the server's words."""
        status, answer = self.send(method, path, body)
        if status >= 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise ClientError(f"server said {status}: {message or answer}")
        return answer

    def send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request: (HTTP status, decoded JSON answer) whatever the status; an error answer that
        is not JSON comes back as {"error": its first 200 characters}."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                status, payload = int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
            try:
                return status, json.loads(payload)
            except ValueError:
                return status, {"error": payload.decode("utf-8", "replace").strip()[:200] or exc.reason}
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the server at {self.base}: {reason}") from None
        try:
            return status, json.loads(payload)
        except ValueError:
            raise ClientError(f"the server at {self.base} did not answer JSON") from None
