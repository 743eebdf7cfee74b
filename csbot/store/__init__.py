"""The SQL store: models, engine, migrations."""

from csbot.store.engine import dialect_insert, make_engine, make_sessionmaker
from csbot.store.models import AccessToken, Base, Conversation, MediaCache, Message, Note, PushNonce, User

__all__ = [
    "AccessToken", "Base", "Conversation", "MediaCache", "Message", "Note", "PushNonce", "User",
    "dialect_insert", "make_engine", "make_sessionmaker",
]
