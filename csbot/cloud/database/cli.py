"""``csbot db``: look into the cloud database from a terminal.

    csbot db collections
    csbot db find orders --where '{"status": "paid"}' --limit 20 --order-by createdAt:desc
    csbot db export orders --format jsonl > orders.jsonl
    csbot db import orders orders.jsonl

Documents are printed as JSON lines (control characters escaped, so nothing a customer typed
can drive the terminal). ``import`` keeps each line's ``_id`` (a new one when absent) and stops
at the first bad line, naming it; lines before it are kept in batches of 500.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, AsyncIterator

IMPORT_BATCH = 500


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("db", parents=[common], help="the cloud database: collections, find, export, import")
    p.add_argument("--app", default="default", help="app name (default: default)")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    c = dbsub.add_parser("collections", parents=[common], help="list collections and their document counts")
    c.set_defaults(func=cmd_db)
    f = dbsub.add_parser("find", parents=[common], help="print the documents a query matches (JSON lines)")
    f.add_argument("collection")
    f.add_argument("--where", default="{}", help="condition in WeChat's wire format (JSON)")
    f.add_argument("--limit", type=int, default=100, help="at most this many (default 100, max 1000)")
    f.add_argument("--skip", type=int, default=0)
    f.add_argument("--order-by", action="append", default=[], metavar="FIELD[:desc]")
    f.set_defaults(func=cmd_db)
    e = dbsub.add_parser("export", parents=[common], help="write every document of a collection")
    e.add_argument("collection")
    e.add_argument("--format", choices=("jsonl",), default="jsonl")
    e.add_argument("--output", "-o", help="file to write (default: standard output)")
    e.set_defaults(func=cmd_db)
    i = dbsub.add_parser("import", parents=[common], help="add the documents of a JSON-lines file")
    i.add_argument("collection")
    i.add_argument("file", help="JSON lines, one document per line; - for standard input")
    i.set_defaults(func=cmd_db)


def _line(doc: Any) -> str:
    """A document as one JSON line; its text is the mini program's users', so inert on a terminal."""
    from csbot.escaping import json_text

    return json_text(doc)


async def _database(args: argparse.Namespace) -> AsyncIterator[Any]:
    from csbot.cli import _settings
    from csbot.cloud.database.api import Database
    from csbot.cloud.database.store import DocumentStore
    from csbot.store import make_engine
    from csbot.store.migrate import ensure_schema

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        await ensure_schema(engine, settings.database_url, auto_upgrade=settings.is_sqlite)
        yield Database(DocumentStore(engine, max_document_size=settings.db_max_document_size,
                                     indexes=settings.collection_indexes), args.app)
    finally:
        await engine.dispose()


async def _run(args: argparse.Namespace) -> int:
    from csbot.cloud.database.errors import DatabaseError

    agen = _database(args)
    db = await agen.__anext__()
    try:
        if args.db_command == "collections":
            for item in await db.collections():
                print(f"{item['name']}\t{item['count']}")
        elif args.db_command == "find":
            try:
                where = json.loads(args.where)
            except ValueError as exc:
                print(f"csbot db: --where is not JSON: {exc}", file=sys.stderr)
                return 2
            query = db.collection(args.collection).where(where).skip(args.skip).limit(args.limit)
            for spec in args.order_by:
                path, _, direction = spec.partition(":")
                query = query.order_by(path, direction or "asc")
            for doc in (await query.get())["data"]:
                print(_line(doc))
        elif args.db_command == "export":
            out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
            try:
                async for doc in db.store.iterate(db.app, args.collection):
                    out.write(_line(doc) + "\n")
            finally:
                if args.output:
                    out.close()
        elif args.db_command == "import":
            return await _import(db, args)
    except DatabaseError as exc:
        print(f"csbot db: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await agen.aclose()
    return 0


async def _import(db: Any, args: argparse.Namespace) -> int:
    from csbot.cloud.database.errors import DatabaseError

    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    added = 0
    batch: list[dict[str, Any]] = []
    first_line = 1

    async def flush() -> None:
        nonlocal added, batch
        if batch:
            try:
                await db.store.insert(db.app, args.collection, batch)
            except DatabaseError as exc:
                raise DatabaseError(f"lines {first_line}-{first_line + len(batch) - 1}: {exc.message}") from None
            added += len(batch)
            batch = []

    try:
        for number, raw in enumerate(source, start=1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
                if not batch:
                    first_line = number
                batch.append(db.store.prepare_new(doc))
            except ValueError as exc:
                print(f"csbot db: line {number} is not JSON: {exc}; {added} document(s) imported", file=sys.stderr)
                return 1
            except DatabaseError as exc:
                print(f"csbot db: line {number}: {exc.message}; {added} document(s) imported", file=sys.stderr)
                return 1
            if len(batch) >= IMPORT_BATCH:
                await flush()
        await flush()
    except DatabaseError as exc:
        print(f"csbot db: {exc.message}; {added} document(s) imported", file=sys.stderr)
        return 1
    finally:
        if source is not sys.stdin:
            source.close()
    print(f"imported {added} document(s) into {args.collection}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
