"""storage: metadata of files kept by cloudPath, and the fileID of an image a customer sent

``storage_files`` holds one row per (app, cloudPath): who owns it (the uploader's openid, or
NULL for files written by the server side), its size, content type and SHA-256, and the key of
the blob the backend keeps. ``messages.file_id`` is the fileID of the image a customer sent.

Rows written before this revision keep their ``media_path`` (a key under
``CSBOT_DATA_DIR/media``); ``csbot storage adopt-media`` moves them into storage.

Revision ID: storage_files
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = 'storage_files'
down_revision = '0002'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'storage_files',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('cloud_path', sa.String(length=1024), nullable=False),
        sa.Column('blob_key', sa.String(length=255), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('content_type', sa.String(length=255), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('owner_openid', sa.String(length=128), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('app', 'cloud_path', name='uq_storage_files_app_path'),
    )
    with op.batch_alter_table('messages') as batch:
        batch.add_column(sa.Column('file_id', sa.String(length=1200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages') as batch:
        batch.drop_column('file_id')
    op.drop_table('storage_files')
