"""Shoal: an event-sourced distributed DAG workflow scheduler."""

__version__ = "0.2.0"
