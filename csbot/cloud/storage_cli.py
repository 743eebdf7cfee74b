"""``csbot storage``: the cloud storage's housekeeping from a terminal.

    csbot storage sweep --dry-run          # report blobs no file references, remove nothing
    csbot storage sweep --grace 7200       # remove those (and unfinished uploads) older than 2 h

``csbot serve`` sweeps at start and hourly with a one-hour grace period; this command is for an
operator who wants to look (or to clean up a store no server runs on). Another process's upload
in progress is protected by the grace period only: keep it above the longest upload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

MIN_GRACE_SECONDS = 60.0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("storage", parents=[common], help="cloud storage housekeeping: sweep orphaned blobs")
    ssub = p.add_subparsers(dest="storage_command", required=True)
    s = ssub.add_parser("sweep", parents=[common],
                        help="remove blobs no file references and unfinished uploads older than --grace")
    s.add_argument("--grace", type=float, default=3600.0,
                   help=f"seconds a blob must be unreferenced-and-old before it goes (default 3600, "
                        f"at least {MIN_GRACE_SECONDS:.0f})")
    s.add_argument("--dry-run", action="store_true", help="report only")
    s.set_defaults(func=cmd_storage)


def cmd_storage(args: argparse.Namespace) -> int:
    from csbot.cli import _settings

    if args.grace < MIN_GRACE_SECONDS:
        print(f"csbot storage sweep: --grace must be at least {MIN_GRACE_SECONDS:.0f} seconds (an upload "
              f"in another process may be between its write and its commit)")
        return 2
    return asyncio.run(_sweep(_settings(args), args.grace, args.dry_run))


async def _sweep(settings: Any, grace: float, dry_run: bool) -> int:
    from csbot.cloud.storage import LocalBackend, Storage
    from csbot.store import make_engine, make_sessionmaker
    from csbot.store.migrate import ensure_schema

    engine = make_engine(settings.database_url)
    try:
        await ensure_schema(engine, settings.database_url, auto_upgrade=settings.is_sqlite)
        storage = Storage(make_sessionmaker(engine), LocalBackend(settings.data_dir / "storage"), signing_key=b"-")
        report = await storage.sweep(grace, dry_run=dry_run)
    finally:
        await engine.dispose()
    print(json.dumps({"dry_run": dry_run, "grace_seconds": grace, **report.as_json()}, ensure_ascii=False))
    return 0
