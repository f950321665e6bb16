"""Outbound HTTP for services: the SSRF guard and ``Retry-After`` parsing.

Named ``net`` rather than ``http`` so that no module of Tasklane shares a standard library name.
"""
