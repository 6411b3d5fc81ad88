"""Seeing what happened: logging setup and Prometheus metrics."""
