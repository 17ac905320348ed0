"""What the daemon reports about itself: counters, status.json and /metrics."""
