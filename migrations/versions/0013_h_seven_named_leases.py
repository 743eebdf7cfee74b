"""leases: one table for leases on named resources; the access-token fetch moves onto it

The token fetch had its own lease columns (access_tokens.fetch_owner/fetch_until) and, on
PostgreSQL, a row lock held across the HTTP fetch. It now takes a ``token:<app>`` lease from
csbot.store.leases like every other lease: the database's clock, a fencing counter, the
process's one instance identity.

Revision ID: h_seven_named_leases
Revises: h_inbox_drop_dead_columns
"""
from alembic import op
import sqlalchemy as sa


revision = 'h_seven_named_leases'
down_revision = 'h_inbox_drop_dead_columns'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=True),
    sa.Column('until', sa.Float(), nullable=True),
    sa.Column('fence', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    # plain ALTER TABLE on both (SQLite >= 3.35 drops unindexed columns in place)
    op.execute("ALTER TABLE access_tokens DROP COLUMN fetch_owner")
    op.execute("ALTER TABLE access_tokens DROP COLUMN fetch_until")


def downgrade() -> None:
    op.add_column('access_tokens', sa.Column('fetch_until', sa.Float(), nullable=True))
    op.add_column('access_tokens', sa.Column('fetch_owner', sa.String(length=64), nullable=True))
    op.drop_table('leases')
