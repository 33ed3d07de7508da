"""`mpota db migrate|check`: the server database's schema version (SQLite or PostgreSQL)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from host_tools.commands._options import actions, flags
from host_tools.errors import MpotaError, UsageError


def register(sub: Any) -> None:
    dsub = actions(sub, "db", "migrate or check the server database schema",
                   "`mpota serve` migrates its database when it starts; run `mpota db migrate` before "
                   "starting several replicas of a new version, and `mpota db check` to see where a database "
                   "stands (exit 1 when migrations are pending).")
    for name, func, what in (("migrate", cmd_migrate, "apply the migrations the database lacks"),
                             ("check", cmd_check,
                              "print the schema version; exit 1 if migrations are pending")):
        p = dsub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        p.add_argument("--db", metavar="URL",
                       help="postgresql://USER@HOST:PORT/DBNAME or sqlite:///PATH "
                            "(what `mpota serve --db` takes)")
        p.add_argument("--feed", "-f", metavar="DIR",
                       help="without --db: the default SQLite database of a server on this feed")
        flags(p, any_role=None)
        p.set_defaults(func=func)


def _url(args: argparse.Namespace) -> str:
    from host_tools.server.store import is_postgres_url, parse_db_url

    if args.db is None and args.feed is None:
        raise UsageError("give --db URL (or --feed DIR for the default SQLite database)")
    if args.db is not None:
        url = str(args.db)
    else:
        url = f"sqlite:///{Path(args.feed).resolve().parent / 'mpota.db'}"
    if not is_postgres_url(url) and not parse_db_url(url).is_file():
        raise MpotaError(f"no database at {parse_db_url(url)}")
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    from host_tools.server.store import open_store

    store = open_store(_url(args), migrate=False)
    try:
        applied = store.migrate()
        version = store.schema_status().version
    finally:
        store.close()
    if args.json:
        print(json.dumps({"version": version, "applied": [{"version": v, "name": n} for v, n in applied]}))
    elif applied:
        for v, n in applied:
            print(f"applied {v}: {n}")
        print(f"schema version {version}")
    else:
        print(f"schema version {version}: nothing to do")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from host_tools.server.store import open_store

    store = open_store(_url(args), migrate=False)
    try:
        st = store.schema_status()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"version": st.version, "latest": st.latest,
                          "pending": [{"version": v, "name": n} for v, n in st.pending]}))
    elif st.newer:
        print(f"schema version {st.version} is newer than this mpota knows ({st.latest}): upgrade mpota")
    elif st.pending:
        print(f"schema version {st.version} of {st.latest}: {len(st.pending)} migration(s) pending "
              f"(mpota db migrate)")
        for v, n in st.pending:
            print(f"  {v}: {n}")
    else:
        print(f"schema version {st.version}: up to date")
    return 0 if not st.pending and not st.newer else 1
