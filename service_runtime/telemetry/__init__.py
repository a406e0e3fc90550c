"""Logs, metrics, tracing and the per-request context they share."""
