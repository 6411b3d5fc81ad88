"""Schedule source: cron and keep-warm ticks (`scheduler`), fired on the leader elected by `leader`."""
