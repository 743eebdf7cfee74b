"""The cloud database: JSON collections with WeChat's query language on SQLite and PostgreSQL.

Layout: ``query`` (wire format → query tree), ``matcher`` (the reference semantics), ``sql``
(SQLite and PostgreSQL compilers), ``update`` (update commands), ``store`` (the documents
table), ``api`` (``Database`` for handlers and scripts), ``commands`` (``db.command``),
``rules`` (security rules), ``http`` (``/cloud/db`` and ``/tcb/database*``), ``jsquery``
(WeChat's query statements, parsed, never run).
"""

from csbot.cloud.database.api import CollectionReference, Database, DocumentReference, Query
from csbot.cloud.database.commands import Command, RegExp
from csbot.cloud.database.errors import (
    DatabaseError, DocumentNotFound, DocumentTooLarge, DuplicateId, InvalidParameter, PermissionDenied,
    QueryError,
)
from csbot.cloud.database.store import DocumentStore

__all__ = [
    "CollectionReference", "Command", "Database", "DatabaseError", "DocumentNotFound", "DocumentReference",
    "DocumentStore", "DocumentTooLarge", "DuplicateId", "InvalidParameter", "PermissionDenied", "Query",
    "QueryError", "RegExp",
]
