"""The daemon's way in: the SMTP listeners, the drop socket, maildrop pickup, cleanup and the group commit."""
