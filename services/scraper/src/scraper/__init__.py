"""Scraper service: polite, SSRF-guarded page fetching and extraction."""
