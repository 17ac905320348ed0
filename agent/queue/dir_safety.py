"""Who may own the daemon's directories, and the one-line refusal when someone else does (pure).

Whoever owns (or may write) the queue directory can swap msg/ underneath the daemon; whoever owns
the maildrop can take or replace other users' drops. The daemon refuses such a directory at start
(exit 78) with the path and the command that fixes it, rather than using it or quietly repairing it.
"""

from __future__ import annotations

import os
import stat

from agent.errors import ConfigError


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def kind(st: os.stat_result) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file")):
        if test(st.st_mode):
            return what
    return "not a directory"


def require_directory(what: str, path: str, st: os.stat_result, setting: str) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(
            f"{what} {path} is {kind(st)}, not a directory; remove it (the daemon makes the directory) "
            f"or point {setting} at a directory"
        )


def require_owner(what: str, path: str, st: os.stat_result, root_ok: bool, recursive: bool = False) -> None:
    me = os.geteuid()
    if st.st_uid == me or (root_ok and st.st_uid == 0):
        return
    allowed = f"root or {user_name(me)}" if root_ok and me else user_name(me)
    owner = user_name(st.st_uid)
    fix = f"chown {'-R ' if recursive else ''}{user_name(me)} {path}"
    if me == 0:  # e.g. `relay-agent run` by hand as root on the service user's directories
        fix += f" (or run the daemon as {owner})"
    raise ConfigError(f"{what} {path} is owned by {owner}, not by {allowed}; {fix}")


def require_not_writable_by_others(what: str, path: str, st: os.stat_result) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise ConfigError(f"{what} {path} is writable by group/others (mode {mode:04o}); chmod 700 {path}")
