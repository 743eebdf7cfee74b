"""console: agent accounts, their sessions and API tokens, the audit log, saved replies, read marks

Also an index for the console's "mine" and "unassigned" filters on ``conversations.assigned_agent``.

Revision ID: h_console_agents
Revises: storage_files
"""
from alembic import op
import sqlalchemy as sa


revision = 'h_console_agents'
down_revision = 'storage_files'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'agents',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('password_hash', sa.Text(), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('password_changed_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name', name='uq_agents_name'),
    )
    op.create_table(
        'agent_sessions',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('agent_id', BigId, nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(['agent_id'], ['agents.id']),
        sa.PrimaryKeyConstraint('token_hash'),
    )
    op.create_index('ix_agent_sessions_agent_id', 'agent_sessions', ['agent_id'])
    op.create_table(
        'agent_tokens',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('agent_id', BigId, nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('last_used_at', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['agent_id'], ['agents.id']),
        sa.PrimaryKeyConstraint('token_hash'),
    )
    op.create_index('ix_agent_tokens_agent_id', 'agent_tokens', ['agent_id'])
    op.create_table(
        'audit_log',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('agent', sa.String(length=128), nullable=True),
        sa.Column('address', sa.String(length=64), nullable=True),
        sa.Column('conversation_id', BigId, nullable=True),
        sa.Column('app', sa.String(length=64), nullable=True),
        sa.Column('openid', sa.String(length=128), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_audit_log_at', 'audit_log', ['at'])
    op.create_index('ix_audit_log_action_at', 'audit_log', ['action', 'at'])
    op.create_index('ix_audit_log_conv', 'audit_log', ['conversation_id', 'id'])
    op.create_table(
        'saved_replies',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('shortcut', sa.String(length=32), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('updated_by', sa.String(length=64), nullable=True),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('shortcut', name='uq_saved_replies_shortcut'),
    )
    op.create_table(
        'conversation_reads',
        sa.Column('agent_id', BigId, nullable=False),
        sa.Column('conversation_id', BigId, nullable=False),
        sa.Column('last_read_id', sa.BigInteger(), nullable=False, server_default='0'),
        sa.ForeignKeyConstraint(['agent_id'], ['agents.id']),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id']),
        sa.PrimaryKeyConstraint('agent_id', 'conversation_id'),
    )
    op.create_index('ix_conversations_assigned', 'conversations', ['assigned_agent'])


def downgrade() -> None:
    op.drop_index('ix_conversations_assigned', table_name='conversations')
    op.drop_table('conversation_reads')
    op.drop_table('saved_replies')
    for name in ('ix_audit_log_conv', 'ix_audit_log_action_at', 'ix_audit_log_at'):
        op.drop_index(name, table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_index('ix_agent_tokens_agent_id', table_name='agent_tokens')
    op.drop_table('agent_tokens')
    op.drop_index('ix_agent_sessions_agent_id', table_name='agent_sessions')
    op.drop_table('agent_sessions')
    op.drop_table('agents')
