"""The SQL schema. Created and changed only by the Alembic migrations in ``migrations/``.

Times are Unix seconds (float) in every table, so SQLite and PostgreSQL compare them the
same way and no timezone can slip in.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGSERIAL.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class User(Base):
    """A customer of one app, known by openid."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("app", "openid", name="uq_users_app_openid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(64))
    openid: Mapped[str] = mapped_column(String(128))
    unionid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    #: csbot.cloud: the session_key of the user's latest wx.login (open-data decryption key;
    #: WeChat rotates it on wx.login). Never returned to a client, never logged.
    session_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    session_key_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Conversation(Base):
    """One thread per app and user. Its lease serialises handling of that user's pushes."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("app", "openid", name="uq_conversations_app_openid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(64))
    openid: Mapped[str] = mapped_column(String(128))
    #: bot | human | closed
    status: Mapped[str] = mapped_column(String(16), default="bot")
    created_at: Mapped[float] = mapped_column(Float)
    last_message_at: Mapped[float] = mapped_column(Float)
    #: the agent (console user name) who took the conversation over
    assigned_agent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: JSON array of tag strings
    tags: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    human_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_agent_reply_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: when a handler last handed the customer to WeChat's customer-service tool
    transferred_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: which worker holds this conversation, and until when
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: sender lane (outbox) lease, separate from the handler lane
    send_lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    send_lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class Message(Base):
    """Every inbound push and every outbound reply.

    Statuses: :mod:`csbot.statuses`. Inbound (direction ``in``): pending → done | failed;
    ``inline`` while an inline handler runs before the ack; ``attempts`` counts handling
    attempts. Outbound (direction ``out``): queued → sending → sent | failed | dead |
    quota_exceeded; ``in_doubt`` after a crash during a send; ``dedup_key`` (``out:…``) makes
    queuing a handler's reply idempotent.
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("app", "dedup_key", name="uq_messages_app_dedup"),
        Index("ix_messages_status_dir", "direction", "status", "id"),
        Index("ix_messages_thread", "app", "openid", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(64))
    openid: Mapped[str] = mapped_column(String(128))
    direction: Mapped[str] = mapped_column(String(3))
    #: WeChat MsgType (text, image, event, …) or the outbound msgtype
    msg_type: Mapped[str] = mapped_column(String(64))
    event: Mapped[str | None] = mapped_column(String(128), nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: inbound: the push as JSON (WeChat field names); outbound: the send body as JSON
    raw: Mapped[str] = mapped_column(Text)
    dedup_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    wechat_msg_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: the push's CreateTime (inbound) or when the reply was produced (outbound)
    created_at: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    handler: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: outbound: the inbound message this replies to; null for agent replies
    in_reply_to: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), nullable=True)
    #: outbound: who wrote it (handler name, "agent:NAME", "apology")
    author: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: outbound: when the next send may start; inbound ``inline``: when the normal path may take
    #: the push over (the database's clock, stamped by the inbox's sweep, csbot.inbox)
    next_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    errcode: Mapped[int | None] = mapped_column(Integer, nullable=True)
    errmsg: Mapped[str | None] = mapped_column(Text, nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    handled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: inbound: the passive reply body given by an inline handler (re-served on retries)
    passive_reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: inbound, before storage existed: key of the media under ``CSBOT_DATA_DIR/media``
    media_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    #: inbound: fileID (``cloud://app/path``) of the image the customer sent, kept in storage
    file_id: Mapped[str | None] = mapped_column(String(1200), nullable=True)


class Note(Base):
    """A private note of an agent on a conversation (never sent to the customer)."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    author: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class AccessToken(Base):
    """The shared access-token cache: one row per app, for every process of a deployment."""

    __tablename__ = "access_tokens"

    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[str | None] = mapped_column(Text, nullable=True)
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    fetched_at: Mapped[float] = mapped_column(Float, default=0.0)


class NamedLeaseRow(Base):
    """A lease on a named resource that is not a user's lane (``token:<app>``: the access-token
    fetch). Taken, fenced and timed like the lane leases (csbot.store.leases)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: the database's clock (Unix seconds) after which the lease is free
    until: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: raised by one at every take: a write fenced on it fails once another holder took over
    fence: Mapped[int] = mapped_column(BigInteger, default=0)


class MediaCache(Base):
    """Uploaded temporary media, reused for their 3-day life."""

    __tablename__ = "media_cache"
    __table_args__ = (UniqueConstraint("app", "sha256", name="uq_media_cache_app_sha"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(16))
    media_id: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[float] = mapped_column(Float)


class StorageFile(Base):
    """A file kept by cloudPath (csbot.cloud.storage): the metadata; the bytes are in the backend."""

    __tablename__ = "storage_files"
    __table_args__ = (UniqueConstraint("app", "cloud_path", name="uq_storage_files_app_path"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(64))
    cloud_path: Mapped[str] = mapped_column(String(1024))
    #: the backend's key of the current version (a new one per upload; the old one is removed)
    blob_key: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    #: openid of the mini-program user who uploaded it; NULL when the server side wrote it
    owner_openid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class CloudSessionRecord(Base):
    """A mini-program login (``POST /cloud/login``): only the token's SHA-256 is stored."""

    __tablename__ = "cloud_sessions"
    __table_args__ = (Index("ix_cloud_sessions_user", "app", "openid"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    app: Mapped[str] = mapped_column(String(64))
    openid: Mapped[str] = mapped_column(String(128))
    unionid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class SubscribeConsent(Base):
    """One-time subscribe-message consents a user gave (``wx.requestSubscribeMessage`` accept).

    ``remaining`` counts accepted and not yet used sends of one template; the outbox's
    subscribe fallback spends one and skips the send when none is left.
    """

    __tablename__ = "subscribe_consents"

    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    openid: Mapped[str] = mapped_column(String(128), primary_key=True)
    template_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    remaining: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float)


class PushNonce(Base):
    """The body first seen for a plaintext push's (timestamp, nonce): see ``csbot.replay``."""

    __tablename__ = "push_nonces"

    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: sha256 of "timestamp nonce" (the nonce is the caller's, of any length)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: sha256 of the body bytes
    body_sha256: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class CloudDocument(Base):
    """A document of the cloud database (csbot.cloud.database): one row per app, collection
    and ``_id``; ``body`` is the whole document as JSON (JSONB on PostgreSQL)."""

    __tablename__ = "cloud_documents"
    __table_args__ = (
        UniqueConstraint("app", "collection", "doc_id", name="uq_cloud_documents_id"),
        Index("ix_cloud_documents_order", "app", "collection", "seq"),
        Index("ix_cloud_documents_owner", "app", "collection", "openid"),
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(64))
    collection: Mapped[str] = mapped_column(String(64))
    doc_id: Mapped[str] = mapped_column(String(128))
    openid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    body: Mapped[str] = mapped_column(Text().with_variant(JSONB(), "postgresql"))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
