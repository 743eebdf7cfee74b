"""cloud functions: mini-program login sessions, users' session_key, subscribe consents

Revision ID: functions_sessions
Revises: h_console_agents
"""
from alembic import op
import sqlalchemy as sa


revision = 'functions_sessions'
down_revision = 'h_console_agents'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('session_key', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('session_key_at', sa.Float(), nullable=True))
    op.create_table(
        'cloud_sessions',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('openid', sa.String(length=128), nullable=False),
        sa.Column('unionid', sa.String(length=128), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('token_hash'),
    )
    op.create_index('ix_cloud_sessions_user', 'cloud_sessions', ['app', 'openid'])
    op.create_table(
        'subscribe_consents',
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('openid', sa.String(length=128), nullable=False),
        sa.Column('template_id', sa.String(length=128), nullable=False),
        sa.Column('remaining', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('app', 'openid', 'template_id'),
    )


def downgrade() -> None:
    op.drop_table('subscribe_consents')
    op.drop_index('ix_cloud_sessions_user', table_name='cloud_sessions')
    op.drop_table('cloud_sessions')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('session_key_at')
        batch.drop_column('session_key')
