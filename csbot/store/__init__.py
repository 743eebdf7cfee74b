"""The SQL store: models, engine, migrations."""

from csbot.store.engine import dialect_insert, make_engine, make_sessionmaker
from csbot.store.models import (AccessToken, Base, CloudSessionRecord, Conversation, MediaCache, Message, Note,
                                PushNonce, SubscribeConsent, User)

__all__ = [
    "AccessToken", "Base", "CloudSessionRecord", "Conversation", "MediaCache", "Message", "Note", "PushNonce", "SubscribeConsent", "User",
    "dialect_insert", "make_engine", "make_sessionmaker",
]
