"""The HTTP ingestion gateway: JSON over HTTP in, contract tasks out, for non-Python upstreams.

``tasklane gateway`` serves :func:`tasklane.gateway.app.create_gateway` under uvicorn
(:mod:`tasklane.gateway.server`). Design and endpoints: docs/gateway.md.
"""
