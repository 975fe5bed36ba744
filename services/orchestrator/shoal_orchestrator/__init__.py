"""The orchestrator: commands in, events appended, effects out through the outbox."""
