"""The cost of TLS on ingest: the same `mpota serve` (SQLite) run twice in the same process, plain
http and https (--tls-cert/--tls-key, an ECDSA P-256 certificate from a CA made here), clients on
keep-alive connections verifying it. Ratio = https / http, for single reports and batches of 50.
(Clients and server share the 2 cores: the client side's TLS cost is in the figure too.)

    python -m bench.bench_ingest_tls        # prints one line
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from bench.bench_ingest import (
    CLIENT_PROCS,
    CONNS,
    DURATION,
    SINGLE_AND_BATCHED,
    bench_root,
    best_of,
    serve_cmd,
    started,
)


def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server chain, server key), P-256, for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bench ca")).issuer_name(name("bench ca"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def run(rounds: int = 2, duration: float = DURATION) -> dict[str, float]:
    with bench_root() as root:
        ca, cert, key = make_certs(root)
        tls = ("--tls-cert", str(cert), "--tls-key", str(key))
        with started({"http": serve_cmd(root, "h.db"), "https": serve_cmd(root, "s.db", *tls)}) as ports:
            r = best_of({"http": (ports["http"], None), "https": (ports["https"], str(ca))},
                        SINGLE_AND_BATCHED, rounds, duration)
    r["ratio_single"] = r["https_single"] / r["http_single"]
    r["ratio_batch50"] = r["https_batch50"] / r["http_batch50"]
    return r


if __name__ == "__main__":
    r = run()
    print(f"ingest over https (TLS 1.3, P-256, {CLIENT_PROCS}x{CONNS} keep-alive connections, "
          f"{os.cpu_count()} cores): single {r['https_single']:.0f} req/s "
          f"(http {r['http_single']:.0f}, ratio {r['ratio_single']:.2f}); "
          f"batches of 50 {r['https_batch50']:.0f} reports/s "
          f"(http {r['http_batch50']:.0f}, ratio {r['ratio_batch50']:.2f})")
