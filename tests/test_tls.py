"""TLS end to end: `mpota serve --tls-cert/--tls-key`, a board on the MicroPython unix port (and
CPython) updating over https with the server certificate checked against the CA in /mpota.json,
refusing a server whose certificate another CA signed (or whose name or dates are wrong), and
never sending its report token over plain http unless the config says so."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from host_tools.fleet import device_token
from host_tools.server.app import ServeError, ServerConfig
from host_tools.server.auth import operator_token
from host_tools.server.client import ClientError, ServerClient
from sim.feedkit import BOARD, Board, Feed, Keys, image, update_script
from sim.serverkit import ServerThread

SECRET = bytes(range(32))
ROOT = Path(__file__).resolve().parent.parent
# An ESP32's clock starts at 2000-01-01 until set: certificates valid from then on pass a date check.
EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Pki:
    folder: Path

    def ca(self, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(EPOCH).not_valid_after(EPOCH + datetime.timedelta(days=365 * 60))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        path = self.folder / f"{cn.replace(' ', '-')}.pem"
        path.write_bytes(_pem(cert))
        return key, cert, path

    def server(self, name: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path],
               host: str = "127.0.0.1", not_after: datetime.datetime | None = None) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca[1].subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(EPOCH)
                .not_valid_after(not_after or EPOCH + datetime.timedelta(days=365 * 60))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))
                                                            if host[0].isdigit() else x509.DNSName(host)]),
                               critical=False)
                .sign(ca[0], hashes.SHA256()))
        cpath, kpath = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cpath.write_bytes(_pem(cert) + _pem(ca[1]))
        kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
        return cpath, kpath


@dataclass
class Setup:
    feed: Feed
    ca: Path
    servers: dict[str, ServerThread]
    keys: Keys


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("tls")
    pki = Pki(tmp)
    good = pki.ca("test ca")
    wrong = pki.ca("wrong ca")
    certs = {"good": pki.server("good", good), "wrong_ca": pki.server("wrong", wrong),
             "wrong_name": pki.server("name", good, host="10.9.8.7"),
             "expired": pki.server("old", good, not_after=EPOCH + datetime.timedelta(days=365))}
    keys = Keys(tmp / "keys")
    feed = Feed(tmp / "feed", keys)
    feed.add_release("1.1.0")
    feed.set_channel("1.1.0")
    servers: dict[str, ServerThread] = {}
    try:
        for name, (cert, key) in certs.items():
            config = ServerConfig(feed_dir=feed.root, db_url=f"sqlite:///{tmp / (name + '.db')}",
                                  fleet_secret=SECRET, tls_cert=cert, tls_key=key)
            servers[name] = ServerThread(config)
        plain = ServerConfig(feed_dir=feed.root, db_url=f"sqlite:///{tmp / 'plain.db'}", fleet_secret=SECRET)
        servers["plain"] = ServerThread(plain)
        yield Setup(feed, good[2], servers, keys)
    finally:
        for s in servers.values():
            s.stop()


def _events(srv: ServerThread, ca: Path | None) -> list[dict[str, Any]]:
    req = urllib.request.Request(srv.url + "/v1/events?limit=1000",
                                 headers={"Authorization": f"Bearer {operator_token(SECRET)}"})
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        return list(json.loads(resp.read())["events"])


def _config(setup: Setup, srv: ServerThread, device_id: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "device_id": device_id, "board": BOARD, "group": "general", "channel": "stable",
        "feed_url": srv.url + "/", "report_url": srv.url + "/v1/reports",
        "token": device_token(SECRET, device_id), "keys": setup.keys.config_keys(),
        "tls_ca": setup.ca.read_text(), "timeout_ms": 5000, "retries": 1, "backoff_ms": 20,
        "max_backoff_ms": 50}
    cfg.update(over)
    return {k: v for k, v in cfg.items() if v is not None}


def _update(tmp: Path, cfg: dict[str, Any], interp: str) -> tuple[dict[str, Any], str]:
    board = Board(tmp / "sim", image("1.0.0"), cfg, "mpy" if interp == "micropython" else "copy")
    out = board.run(update_script(), interp)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.result(), out.stdout


def test_a_board_updates_over_https_with_a_verified_certificate(setup: Setup, interp: str,
                                                                tmp_path: Path) -> None:
    srv = setup.servers["good"]
    assert srv.url.startswith("https://")
    device_id = f"tls-ok-{interp}"
    res, _ = _update(tmp_path, _config(setup, srv, device_id), interp)
    assert res["outcome"] == "ok" and res["version"] == "1.1.0", res
    mine = [e["event"] for e in _events(srv, setup.ca) if e["device_id"] == device_id]
    assert mine[0] == "checking" and mine[-1] == "installed", mine  # reports went over https


# (the date check is mbedtls's on the board; CPython's is OpenSSL's and not the point here)
@pytest.mark.parametrize(("server", "interp"), [("wrong_ca", "micropython"), ("wrong_name", "micropython"),
                                                ("expired", "micropython"), ("wrong_ca", "cpython"),
                                                ("wrong_name", "cpython")])
def test_a_board_refuses_a_server_it_cannot_verify(setup: Setup, server: str, interp: str,
                                                   tmp_path: Path) -> None:
    srv = setup.servers[server]
    device_id = f"tls-bad-{server}-{interp}"
    res, _ = _update(tmp_path, _config(setup, srv, device_id), interp)
    assert res["outcome"] == "error" and res["code"] == "tls", res
    assert "certificate" in res["msg"]
    # no report reached it: the token never crossed an unverified connection
    assert srv.server.store.device_events(device_id) == []


def test_no_tls_ca_no_https_and_no_token_over_plain_http(setup: Setup, tmp_path: Path) -> None:
    # on the board there is no CA store: https without tls_ca is refused, not left unverified
    res, _ = _update(tmp_path / "a", _config(setup, setup.servers["good"], "tls-noca", tls_ca=None),
                     "micropython")
    assert res["outcome"] == "error" and res["code"] == "tls" and "tls_ca" in res["msg"], res
    # plain http: the signed feed is fine to fetch, the report token is not sent without allow_http
    plain = setup.servers["plain"]
    res, stdout = _update(tmp_path / "b", _config(setup, plain, "tls-plain"), "micropython")
    assert res["outcome"] == "ok", res
    assert "plain http" in stdout
    assert [e for e in _events(plain, None) if e["device_id"] == "tls-plain"] == []
    res, _ = _update(tmp_path / "c", _config(setup, plain, "tls-lab", allow_http=True), "micropython")
    assert res["outcome"] == "ok"
    assert [e["event"] for e in _events(plain, None) if e["device_id"] == "tls-lab"][-1] == "installed"


def test_serve_tls_options(setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the server side: https only with both files, each a real PEM; http clients cannot talk to it
    srv = setup.servers["good"]
    status = urllib.request.Request(srv.url + "/v1/status",
                                    headers={"Authorization": f"Bearer {operator_token(SECRET)}"})
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(status, timeout=5, context=ssl.create_default_context())  # no CA: not trusted
    with urllib.request.urlopen(status, timeout=5,
                                context=ssl.create_default_context(cafile=str(setup.ca))) as resp:
        assert resp.status == 200
    # the operator CLI's client, told the CA by MPOTA_TLS_CA
    monkeypatch.setenv("MPOTA_TLS_CA", str(setup.ca))
    assert "devices" in ServerClient(srv.url, operator_token(SECRET)).call("GET", "/v1/devices")
    monkeypatch.delenv("MPOTA_TLS_CA")
    with pytest.raises(ClientError, match="CERTIFICATE_VERIFY_FAILED"):
        ServerClient(srv.url, operator_token(SECRET)).call("GET", "/v1/devices")
    (tmp_path / "feed").mkdir()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for cert, key, words in ((junk, junk, "not a PEM certificate"), (setup.ca, setup.ca, "not a PEM"),
                             (tmp_path / "missing.pem", junk, "cannot read")):
        with pytest.raises(ServeError, match=words):
            ServerThread(ServerConfig(feed_dir=tmp_path / "feed", db_url=f"sqlite:///{tmp_path / 'x.db'}",
                                      tls_cert=cert, tls_key=key))
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "serve", "--feed", str(tmp_path / "feed"),
                        "--tls-cert", str(setup.ca)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "--tls-key" in r.stderr
