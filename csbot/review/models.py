"""The review's own table (migration 0002): what people did to a conversation, and when."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Float, String, Text
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
