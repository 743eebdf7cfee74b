"""inbox: drop conversations.last_user_action_at/_kind (written on every push, never read)

WeChat's reply window and quota are counted from the user's pushes themselves (the outbox
reads them from ``messages``), so these copies were dead weight on the hot path.

Revision ID: h_inbox_drop_dead_columns
Revises: h_clouddb_documents
"""
from alembic import op
import sqlalchemy as sa


revision = 'h_inbox_drop_dead_columns'
down_revision = 'h_clouddb_documents'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE on both (SQLite >= 3.35 drops unindexed columns in place: no table copy)
    op.execute("ALTER TABLE conversations DROP COLUMN last_user_action_at")
    op.execute("ALTER TABLE conversations DROP COLUMN last_user_action_kind")


def downgrade() -> None:
    op.add_column('conversations', sa.Column('last_user_action_kind', sa.String(length=16), nullable=True))
    op.add_column('conversations', sa.Column('last_user_action_at', sa.Float(), nullable=True))
