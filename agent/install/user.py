"""The service user and the directories it owns: create them on install, keep or purge them on uninstall.

The user database is the target root's, not the host's: they differ for `--root`.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
from functools import partial

from agent.install.layout import CONFIG_DIR, DIRS, HOME, MAILDROP, QUEUE, USER, in_root
from agent.install.steps import Step, noop, run


def lookup_ids(root: str, name: str = USER) -> tuple[int, int] | None:
    """(uid, gid) of `name` in the target root, not the host (they differ for --root)."""
    if root == "/":
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid
    try:
        with open(in_root(root, "/etc/passwd"), encoding="utf-8") as fh:
            for line in fh:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 4 and fields[0] == name:
                    return int(fields[2]), int(fields[3])
    except (OSError, ValueError):
        return None
    return None


def has_user_db(root: str) -> bool:
    return root == "/" or os.path.isfile(in_root(root, "/etc/passwd"))


def user_step(root: str) -> Step:
    if lookup_ids(root) is not None:
        return Step(f"system user {USER} exists in {in_root(root, '/etc/passwd')}", noop)
    if not has_user_db(root):
        return Step(
            f"no {in_root(root, '/etc/passwd')}: user {USER} will come from the sysusers.d snippet "
            "at first boot; directories stay owned by root until then (tmpfiles.d fixes them)",
            noop,
        )
    cmd = ["useradd", "--system", "--user-group", "--home-dir", HOME, "--no-create-home"]
    cmd += ["--shell", "/usr/sbin/nologin", "--comment", "relay-agent mail queue", USER]
    if root != "/":
        cmd[1:1] = ["--prefix", root]
    return Step(f"create system user: {shlex.join(cmd)}", lambda: run(cmd))


def dir_steps(root: str) -> list[Step]:
    return [
        Step(
            f"directory {in_root(root, path)} mode {mode:04o} owner {owner}",
            partial(make_dir, root, path, owner, mode),
        )
        for path, owner, mode in DIRS
    ]


def make_dir(root: str, path: str, owner: str, mode: int) -> None:
    target = in_root(root, path)
    os.makedirs(target, mode=0o755, exist_ok=True)
    ids = lookup_ids(root) if USER in owner else (0, 0)
    if ids is not None:  # else: no user yet (no passwd in root); tmpfiles.d fixes it at boot
        uid, gid = ids
        os.chown(target, uid if owner.startswith(USER) else 0, gid)
    os.chmod(target, mode)  # explicitly: makedirs' mode is filtered by the umask


def data_steps(root: str, purge: bool) -> list[Step]:
    """Uninstall: config, keys and queued mail stay unless purged; purging also removes the user."""
    kept = [in_root(root, p) for p in (CONFIG_DIR, QUEUE, MAILDROP) if os.path.lexists(in_root(root, p))]
    if not purge:
        note = f"keep {', '.join(kept)} (config, keys, queued mail): --purge removes them"
        return [Step(note, noop)] if kept else []
    steps = [Step(f"purge {path}", partial(shutil.rmtree, path)) for path in kept]
    if lookup_ids(root) is not None:
        cmd = ["userdel", USER] if root == "/" else ["userdel", "--prefix", root, USER]
        steps.append(Step(f"remove user: {shlex.join(cmd)}", partial(run, cmd)))
    return steps
