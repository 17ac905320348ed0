"""The queue on disk: queue and state file formats, ids, the maildrop writer and trigger, spools, and
the views the CLI reads.
"""
