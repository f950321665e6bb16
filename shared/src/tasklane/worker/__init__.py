"""The worker runtime: the app factory, the contract task base, the consumer and shutdown steps.

Upstreams never import this package; ``tasklane.publish`` does not load it.
"""
