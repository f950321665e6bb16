"""Integrations of Tasklane with application frameworks: ``tasklane.contrib.django``."""
