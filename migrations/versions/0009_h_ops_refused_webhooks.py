"""refused_pushes (CSBOT_KEEP_REFUSED: the latest refused pushes, kept for diagnosis) and
webhook_deliveries (the durable queue of outbound webhooks)

Revision ID: h_ops_refused_webhooks
Revises: functions_sessions
"""
from alembic import op
import sqlalchemy as sa


revision = 'h_ops_refused_webhooks'
down_revision = 'functions_sessions'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'refused_pushes',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('remote', sa.String(length=64), nullable=True),
        sa.Column('method', sa.String(length=8), nullable=False),
        sa.Column('path', sa.String(length=256), nullable=False),
        sa.Column('query', sa.Text(), nullable=False),
        sa.Column('content_type', sa.String(length=128), nullable=True),
        sa.Column('body', sa.LargeBinary(), nullable=True),
        sa.Column('body_size', sa.Integer(), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('webhook', sa.String(length=64), nullable=False),
        sa.Column('event', sa.String(length=64), nullable=False),
        sa.Column('app', sa.String(length=64), nullable=True),
        sa.Column('openid', sa.String(length=128), nullable=True),
        sa.Column('body', sa.Text(), nullable=False),
        #: pending | delivered | failed
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('next_attempt_at', sa.Float(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('delivered_at', sa.Float(), nullable=True),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_until', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_table('refused_pushes')
