"""`relay-agent demo`: the whole mail path on this machine, with a local smarthost stand-in."""
