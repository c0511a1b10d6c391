"""Revision scripts (Alembic loads them by file; this package only makes setuptools ship them)."""
