"""Tasklane's dev kit: the demo, local sinks (SMTP, webhooks, a catalogue site) and an embedded
broker. Never part of the runtime package or an image.
"""
