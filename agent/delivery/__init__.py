"""The daemon's way out: the scheduler, its pure decisions, retry backoff and pacing."""
