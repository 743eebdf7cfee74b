"""cloud database: one documents table for every app's JSON collections

``body`` is the document as JSON (SQLite: canonical text read with JSON1; PostgreSQL: JSONB),
including ``_id`` and ``_openid``; ``doc_id`` and ``openid`` repeat them as columns so lookups by
id and by owner use plain indexes. Declared indexes (``[collections.NAME] indexes``) are
expression indexes created at start-up, not here: they come from configuration.

Revision ID: h_clouddb_documents
Revises: h_wire_push_nonces
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = 'h_clouddb_documents'
down_revision = 'h_wire_push_nonces'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'cloud_documents',
        sa.Column('seq', BigId, autoincrement=True, nullable=False),
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('collection', sa.String(length=64), nullable=False),
        sa.Column('doc_id', sa.String(length=128), nullable=False),
        sa.Column('openid', sa.String(length=128), nullable=True),
        sa.Column('body', sa.Text().with_variant(postgresql.JSONB(), 'postgresql'), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('app', 'collection', 'doc_id', name='uq_cloud_documents_id'),
    )
    op.create_index('ix_cloud_documents_order', 'cloud_documents', ['app', 'collection', 'seq'])
    op.create_index('ix_cloud_documents_owner', 'cloud_documents', ['app', 'collection', 'openid'])


def downgrade() -> None:
    op.drop_table('cloud_documents')
