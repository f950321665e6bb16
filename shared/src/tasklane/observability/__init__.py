"""Metrics, exemplars, probes, traces, logs, the broker exporter and Flower."""
