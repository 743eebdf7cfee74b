"""The cloud database: JSON collections with WeChat's query language on SQLite and PostgreSQL."""
