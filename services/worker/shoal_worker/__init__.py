"""The worker: runs task attempts for one worker group and reports on ``<prefix>.commands``."""
