"""Shared test fixtures: the interpreter parametrization, simulated boards, a serial port, databases.
Helpers that are not fixtures: tests/helpers.py (run_cli, free_port), tests/collector.py.

- ``interp``: parametrized over "cpython" and "micropython" (the unix port); a test taking it
  runs once per interpreter. Pass it to ``SimBoard.run(script, interp)``.
- ``sim_board``: a fresh simulated esp32-generic-4mb board (factory state, v1.0.0 in ota_0,
  device package copied to /lib/mpota) in the test's tmp dir.
- ``make_board(name="esp32-generic-4mb", **kwargs)``: more boards (see ``SimBoard.create``).
- ``cli_dir``: the test's tmp dir as the current folder, with a release key rel.pem and a rollout
  key ro.pem made by `mpota keygen` (the CLI tests' starting point).
- ``keys`` / ``server``: per test module, a release + rollout key set (``sim.feedkit.Keys``) and a
  loopback ``FeedServer``; a test points the server at its own feed (``sim.feedkit.FeedEnv``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.board import SimBoard
from sim.feedkit import FeedServer, Keys, serve


@pytest.fixture(params=[
    "cpython",
    pytest.param("micropython", marks=pytest.mark.mpy),
])
def interp(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_board(tmp_path: Path) -> Callable[..., SimBoard]:
    count = [0]

    def make(board: str = "esp32-generic-4mb", **kwargs: Any) -> SimBoard:
        count[0] += 1
        return SimBoard.create(tmp_path / f"board{count[0]}", board, **kwargs)

    return make


@pytest.fixture
def sim_board(make_board: Callable[..., SimBoard]) -> SimBoard:
    return make_board()


@pytest.fixture
def cli_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    from helpers import cli

    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "keygen", "rel.pem", "--role", "release")[0] == 0
    assert cli(capsys, "keygen", "ro.pem", "--role", "rollout")[0] == 0
    return tmp_path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedServer]:
    with serve(tmp_path_factory.mktemp("empty")) as s:
        yield s


@pytest.fixture
def port() -> Iterator[str]:
    """A real character device standing in for a board's USB serial port: a pty slave."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def _throwaway_pg() -> Iterator[Any]:
    from sim.pgcluster import PgCluster, why_unavailable

    reason = why_unavailable()
    if reason is not None:
        pytest.skip(f"PostgreSQL tests: {reason}")
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL server per test session (worker), started on first use."""
    yield from _throwaway_pg()


@pytest.fixture
def own_pg_cluster() -> Iterator[Any]:
    """A PostgreSQL server of the test's own, one it may stop."""
    yield from _throwaway_pg()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """A fresh empty database on the session's PostgreSQL server."""
    return str(pg_cluster.create_database())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL, once per backend: tests taking it run on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return str(request.getfixturevalue("pg_url"))
