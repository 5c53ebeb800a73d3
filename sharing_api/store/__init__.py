"""Durable state in SQL (SQLAlchemy Core): SQLite embedded by default, PostgreSQL in production."""
