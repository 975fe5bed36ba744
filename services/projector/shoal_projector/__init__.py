"""The projector: folds the event log into the ``shoal_read`` tables."""
