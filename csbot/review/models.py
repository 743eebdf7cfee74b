"""The review's own tables: conversation events (migration 0002); agents, their sessions and API
tokens, the audit log, saved replies and read marks (migration 0003)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from csbot.store.models import Base, BigId


class ConversationEvent(Base):
    """A status change or other action on a conversation, shown on its thread."""

    __tablename__ = "conversation_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    at: Mapped[float] = mapped_column(Float)
    #: takeover | handback | close | timeout | tags
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class Agent(Base):
    """A person who signs in to the console (or an integration acting as one, by API token)."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("name", name="uq_agents_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    #: admin | agent
    role: Mapped[str] = mapped_column(String(16))
    #: argon2id, in the PHC string format argon2-cffi writes
    password_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    password_changed_at: Mapped[float] = mapped_column(Float)


class AgentSession(Base):
    """A signed-in console session; the cookie carries a random token, this row its SHA-256."""

    __tablename__ = "agent_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AgentToken(Base):
    """A per-agent API token (``csbot agents token NAME``); stored as its SHA-256 only."""

    __tablename__ = "agent_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditEntry(Base):
    """Who did what, when, from where: every agent action and every sign-in attempt."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_action_at", "action", "at"),
                      Index("ix_audit_log_conv", "conversation_id", "id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    #: takeover, handback, close, reply, image, retry, tag, note, assign, sign_in, failed_sign_in, ...
    action: Mapped[str] = mapped_column(String(32))
    #: the agent's name (or the name given with the admin token, or the CLI user); for a failed
    #: sign-in, the name that was tried
    agent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: the client's address, or ``cli`` for the command line
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    conversation_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    app: Mapped[str | None] = mapped_column(String(64), nullable=True)
    openid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class SavedReply(Base):
    """A canned answer agents insert in the composer by typing ``/`` and its shortcut."""

    __tablename__ = "saved_replies"
    __table_args__ = (UniqueConstraint("shortcut", name="uq_saved_replies_shortcut"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    shortcut: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class ConversationRead(Base):
    """How far an agent has read a conversation (its unread count is what came in after)."""

    __tablename__ = "conversation_reads"

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), primary_key=True)
    last_read_id: Mapped[int] = mapped_column(BigInteger, default=0)
