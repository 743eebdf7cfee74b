"""push_nonces: the body first seen for a plaintext push's (timestamp, nonce)

Revision ID: h_wire_push_nonces
Revises: h_ops_refused_webhooks
"""
from alembic import op
import sqlalchemy as sa


revision = 'h_wire_push_nonces'
down_revision = 'h_ops_refused_webhooks'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'push_nonces',
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('body_sha256', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('app', 'key'),
    )
    op.create_index('ix_push_nonces_expires_at', 'push_nonces', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_push_nonces_expires_at', table_name='push_nonces')
    op.drop_table('push_nonces')
