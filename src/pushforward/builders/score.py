"""Builders (filled in by the family's author)."""
