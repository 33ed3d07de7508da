"""A database outage (PostgreSQL stopped under a running server): every route answers 503 with
Retry-After (the outage passes: devices and operators retry later), never a 500, and the log says
so in a line or two instead of a traceback per request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from host_tools.server.app import ServerConfig
from host_tools.server.auth import operator_token
from sim.serverkit import HttpClient, ReportingDevice, ServerThread

pytestmark = pytest.mark.postgres
SECRET = b"\x42" * 32
OP = {"Authorization": f"Bearer {operator_token(SECRET)}"}


def test_every_route_answers_503_while_the_database_is_down(own_pg_cluster: Any, tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    cluster = own_pg_cluster  # stopped under the mpota server
    from host_tools.server.store_pg import PostgresStore

    (tmp_path / "feed").mkdir()
    store = PostgresStore(cluster.create_database(), timeout=1.0)  # a short wait for a connection
    srv = ServerThread(ServerConfig(feed_dir=tmp_path / "feed", fleet_secret=SECRET, tick_s=0.2),
                       store=store)
    try:
        client = HttpClient(srv.url)
        device = ReportingDevice(srv.url, SECRET, "dev-1")
        assert device.post(device.build("heartbeat"))[0] == 200
        assert client.request("GET", "/v1/devices", None, OP)[0] == 200
        cluster.stop()  # immediate shutdown: every connection of the pool breaks
        calls = [("GET", "/v1/devices", None), ("GET", "/v1/devices/dev-1", None),
                 ("GET", "/v1/events?limit=5", None), ("GET", "/v1/rollouts", None),
                 ("GET", "/v1/rollouts/r-1", None), ("GET", "/v1/status", None),
                 ("POST", "/v1/devices", b'{"device_id": "dev-2", "board": "b", "group": "g"}'),
                 ("POST", "/v1/rollouts/r-1/pause", b"{}")]
        for method, path, body in calls:
            status, headers, data = client.request(method, path, body, OP)
            assert status == 503, (method, path, status, data[:200])
            assert headers.get("retry-after") == "5", (method, path)
        status, answer = device.post(device.build("heartbeat"))
        assert status == 503, answer
        device.close()
        client.close()
    finally:
        srv.stop()
        store.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert 1 <= err.count("database unavailable") <= 3, err[-2000:]
