"""The sendmail side: the `sendmail` and `mailq` commands, `sendmail -bs`, their fast path and the
client that hands mail to the daemon.
"""
