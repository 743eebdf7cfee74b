"""Errors of the cloud database: each names the problem and maps to one HTTP status.

``errCode`` values follow WeChat's cloud database where WeChat has one (-502003 permission
denied, -502002 bad database command, -501007 invalid parameter); the rest are csbot's own and
documented in the README.
"""

from __future__ import annotations


class DatabaseError(Exception):
    """Base class. ``status`` is the HTTP status a client gets, ``code`` the errCode."""

    status = 400
    code = -501007

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_json(self) -> dict[str, object]:
        return {"errCode": self.code, "errMsg": self.message}


class QueryError(DatabaseError):
    """A malformed query, update or document (unknown operator, bad field name, wrong type)."""

    code = -502002


class InvalidParameter(DatabaseError):
    """A bad argument outside the query language (limit, collection name, order direction)."""

    code = -501007


class DuplicateId(DatabaseError):
    """``add`` with an ``_id`` that already exists in the collection."""

    code = -502006


class DocumentNotFound(DatabaseError):
    status = 404
    code = -502004


class DocumentTooLarge(DatabaseError):
    status = 413
    code = -502007


class PermissionDenied(DatabaseError):
    """A security rule refused the request; the message says which condition is missing."""

    status = 403
    code = -502003


class RegexTooSlow(QueryError):
    """A ``$regex`` ran past its time bound on the stored values (catastrophic backtracking)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (
            "$regex: the pattern took too long on the stored values (nested repetition such as "
            "(a|aa)+ backtracks exponentially); simplify the pattern"))
