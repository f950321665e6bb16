"""Tasklane media worker service."""
