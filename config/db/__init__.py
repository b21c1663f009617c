"""Database layer: the PostgreSQL backend that keeps row-level security in step with django-scopes."""
