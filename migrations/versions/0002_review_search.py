"""review: full-text search over message text, conversation activity index, conversation events

SQLite: an FTS5 external-content table ``messages_fts`` on ``messages.text``, kept in step by
triggers (trigram tokenizer when the SQLite library has it, 3.34+, so Chinese text is
searchable by substring; unicode61 otherwise). PostgreSQL: a pg_trgm GIN index on
``messages.text`` that serves ``ILIKE '%…%'``.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def _sqlite_has_trigram(bind) -> bool:
    version = bind.exec_driver_sql("select sqlite_version()").scalar()
    return tuple(int(p) for p in version.split(".")[:2]) >= (3, 34)


def upgrade() -> None:
    bind = op.get_bind()
    op.create_index('ix_conversations_activity', 'conversations', ['last_message_at', 'id'])
    op.create_table(
        'conversation_events',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('conversation_id', BigId, nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        #: takeover | handback | close | reopen | timeout | tags
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_conversation_events_conv', 'conversation_events', ['conversation_id', 'id'])

    if bind.dialect.name == 'sqlite':
        tokenizer = "trigram" if _sqlite_has_trigram(bind) else "unicode61"
        op.execute(f"CREATE VIRTUAL TABLE messages_fts USING fts5(text, content='messages', "
                   f"content_rowid='id', tokenize='{tokenizer}')")
        op.execute("""
            CREATE TRIGGER messages_fts_ai AFTER INSERT ON messages WHEN new.text IS NOT NULL BEGIN
              INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
            END""")
        op.execute("""
            CREATE TRIGGER messages_fts_ad AFTER DELETE ON messages WHEN old.text IS NOT NULL BEGIN
              INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
            END""")
        op.execute("""
            CREATE TRIGGER messages_fts_au AFTER UPDATE OF text ON messages BEGIN
              INSERT INTO messages_fts(messages_fts, rowid, text)
                SELECT 'delete', old.id, old.text WHERE old.text IS NOT NULL;
              INSERT INTO messages_fts(rowid, text) SELECT new.id, new.text WHERE new.text IS NOT NULL;
            END""")
        op.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
    elif bind.dialect.name == 'postgresql':
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX ix_messages_text_trgm ON messages USING gin (text gin_trgm_ops)")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        for trigger in ('messages_fts_ai', 'messages_fts_ad', 'messages_fts_au'):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
    elif bind.dialect.name == 'postgresql':
        op.execute("DROP INDEX IF EXISTS ix_messages_text_trgm")
    op.drop_index('ix_conversation_events_conv', table_name='conversation_events')
    op.drop_table('conversation_events')
    op.drop_index('ix_conversations_activity', table_name='conversations')
