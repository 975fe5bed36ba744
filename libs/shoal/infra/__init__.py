"""Adapters: Kafka, Postgres, codec, settings, lifecycle. May import the core, never the reverse."""
