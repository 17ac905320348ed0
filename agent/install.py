"""Install / uninstall relay-agent on a host or into a target root (`--root DIR`).

`plan()` and `plan_uninstall()` only look at the target tree and return the steps
to take; `execute()` prints each step and runs it (or, with dry_run, only prints).
A dry run therefore shows exactly what a real run would do.

Files another MTA owns (/usr/sbin/sendmail, /usr/bin/mailq, /usr/lib/sendmail, newaliases) are
put aside, never overwritten: with dpkg by a local `dpkg-divert --rename` (dpkg then
keeps the other MTA's package updates away from our links), otherwise renamed to
`<path>.relay-agent-orig` and recorded in the manifest, so uninstall puts them back.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from agent.errors import AgentError, PolicyError, TempError

USER = "relay-agent"
HOME = "/var/spool/relay-agent"
ORIG_SUFFIX = ".relay-agent-orig"
UNIT_EXEC = "/usr/local/lib/relay-agent/venv/bin/relay-agent"
STUB_DIR = "/usr/lib/relay-agent"
MANIFEST = "/var/lib/relay-agent/install-manifest"
UNIT = "/etc/systemd/system/relay-agent.service"
SYSUSERS = "/usr/lib/sysusers.d/relay-agent.conf"
TMPFILES = "/usr/lib/tmpfiles.d/relay-agent.conf"
CONFIG_DIR = "/etc/relay-agent"
CONFIG = "/etc/relay-agent/config.toml"
DKIM_DIR = "/etc/relay-agent/dkim"
QUEUE = "/var/spool/relay-agent"
MAILDROP = "/var/spool/relay-agent-maildrop"
SERVICE = f"{USER}:{USER}"
# (path, owner:group, mode). DKIM keys: root's, readable by the service's group only.
DIRS = (
    (CONFIG_DIR, "root:root", 0o755),
    (DKIM_DIR, f"root:{USER}", 0o750),
    (QUEUE, SERVICE, 0o700),
    (MAILDROP, SERVICE, 0o1733),
    (os.path.dirname(MANIFEST), "root:root", 0o755),
)
# (public path, stub it should run); /usr/lib/sendmail is what old scripts call.
LINKS = (
    ("/usr/sbin/sendmail", "sendmail"),
    ("/usr/bin/mailq", "mailq"),
    ("/usr/lib/sendmail", "sendmail"),
    ("/usr/bin/newaliases", "sendmail"),  # sendmail run as newaliases is `sendmail -bi`: a no-op
)


@dataclass(frozen=True)
class Step:
    description: str
    action: Callable[[], object]  # a str it returns is a note for the user


def _noop() -> None:
    return None


def in_root(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root != "/" else path


def source_dir() -> Path:
    """The checkout/sdist directory holding systemd/ and examples/ beside agent/."""
    base = Path(__file__).resolve().parent.parent
    if not (base / "systemd" / "relay-agent.service").is_file():
        raise AgentError(f"cannot find systemd/relay-agent.service under {base}")
    return base


def render_unit(text: str, venv_bin: str) -> str:
    return text.replace(UNIT_EXEC, os.path.join(venv_bin, "relay-agent"))


def systemd_running(root: str) -> bool:
    # sd_booted(3): only a live systemd on this very root can be told to reload.
    return root == "/" and os.path.isdir("/run/systemd/system")


def dpkg_available(root: str) -> bool:
    return shutil.which("dpkg-divert") is not None and os.path.isfile(in_root(root, "/var/lib/dpkg/status"))


# --- lookups in the target root's user database -------------------------------


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


# --- small actions ---------------------------------------------------------------


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise AgentError(f"{cmd[0]} failed ({proc.returncode}): {lines[-1] if lines else 'no output'}")


def write_file(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.relay-agent-tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def make_dir(root: str, path: str, owner: str, mode: int) -> None:
    target = in_root(root, path)
    os.makedirs(target, mode=0o755, exist_ok=True)
    ids = lookup_ids(root) if USER in owner else (0, 0)
    if ids is not None:  # else: no user yet (no passwd in root); tmpfiles.d fixes it at boot
        uid, gid = ids
        os.chown(target, uid if owner.startswith(USER) else 0, gid)
    os.chmod(target, mode)  # explicitly: makedirs' mode is filtered by the umask


def append_manifest(root: str, line: str) -> None:
    path = in_root(root, MANIFEST)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_manifest(root: str) -> list[list[str]]:
    try:
        with open(in_root(root, MANIFEST), encoding="utf-8") as fh:
            return [line.split("\t") for line in fh.read().splitlines() if line]
    except FileNotFoundError:
        return []


def stub_dirs(venv_bin: str) -> list[str]:
    """sys.path the stubs need under `python -S`: the venv's site-packages and agent's parent."""
    code = "from agent import stub; print(*stub.default_site_dirs(), sep='\\n')"
    python = os.path.join(venv_bin, "python")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AgentError(f"{python} cannot import agent: {proc.stderr.strip().splitlines()[-1:]}")
    return list(dict.fromkeys(p for p in proc.stdout.splitlines() if p))


def write_stub(root: str, entry: str, venv_bin: str) -> None:
    try:
        from agent import stub
    except ImportError as exc:
        raise AgentError(f"cannot render the {entry} stub: {exc}") from None

    text = stub.render(entry, os.path.join(venv_bin, "python"), stub_dirs(venv_bin))
    write_file(in_root(root, f"{STUB_DIR}/{entry}"), text, 0o755)


def link_target(path: str, entry: str) -> str:
    # Relative, so the link works both inside the root (chroot, image) and from outside.
    return os.path.relpath(f"{STUB_DIR}/{entry}", os.path.dirname(path))


def is_our_link(root: str, path: str, entry: str) -> bool:
    target = in_root(root, path)
    return os.path.islink(target) and os.readlink(target) == link_target(path, entry)


def points_at_sendmail(root: str, path: str) -> bool:
    """/usr/lib/sendmail that is already a link to /usr/sbin/sendmail needs nothing."""
    target = in_root(root, path)
    if not os.path.islink(target):
        return False
    dest = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(target)))
    return dest == "/usr/sbin/sendmail"


# --- the install plan --------------------------------------------------------------


def plan(root: str, venv_bin: str, dpkg: bool) -> list[Step]:
    """Every step of an install into `root` ("/" for this host), looking only."""
    src = source_dir()
    steps = [user_step(root)]
    for path, owner, mode in DIRS:
        steps.append(
            Step(
                f"directory {in_root(root, path)} mode {mode:04o} owner {owner}",
                partial(make_dir, root, path, owner, mode),
            )
        )
    steps += file_steps(root, src, venv_bin)
    for entry in ("sendmail", "mailq"):
        steps.append(
            Step(
                f"stub {in_root(root, f'{STUB_DIR}/{entry}')} mode 0755 (runs {venv_bin}/python -S -E)",
                partial(write_stub, root, entry, venv_bin),
            )
        )
    for path, entry in LINKS:
        steps += link_steps(root, path, entry, dpkg)
    steps += activation_steps(root, install=True)
    return steps


def user_step(root: str) -> Step:
    if lookup_ids(root) is not None:
        return Step(f"system user {USER} exists in {in_root(root, '/etc/passwd')}", _noop)
    if not has_user_db(root):
        return Step(
            f"no {in_root(root, '/etc/passwd')}: user {USER} will come from the sysusers.d snippet "
            "at first boot; directories stay owned by root until then (tmpfiles.d fixes them)",
            _noop,
        )
    cmd = ["useradd", "--system", "--user-group", "--home-dir", HOME, "--no-create-home"]
    cmd += ["--shell", "/usr/sbin/nologin", "--comment", "relay-agent mail queue", USER]
    if root != "/":
        cmd[1:1] = ["--prefix", root]
    return Step(f"create system user: {shlex.join(cmd)}", lambda: run(cmd))


def file_steps(root: str, src: Path, venv_bin: str) -> list[Step]:
    unit = render_unit((src / "systemd" / "relay-agent.service").read_text(encoding="utf-8"), venv_bin)
    copies = [
        (UNIT, unit, f" (ExecStart={venv_bin}/relay-agent run)"),
        (SYSUSERS, (src / "systemd" / "relay-agent.sysusers").read_text(encoding="utf-8"), ""),
        (TMPFILES, (src / "systemd" / "relay-agent.tmpfiles").read_text(encoding="utf-8"), ""),
    ]
    steps = [
        Step(
            f"file {in_root(root, path)} mode 0644{note}",
            partial(write_file, in_root(root, path), text, 0o644),
        )
        for path, text, note in copies
    ]
    config = in_root(root, CONFIG)
    if os.path.lexists(config):
        steps.append(Step(f"keep existing config {config}", _noop))
    else:
        sample = (src / "examples" / "config.toml").read_text(encoding="utf-8")
        # 0644: sendmail reads it as the submitting user; it never holds the password.
        steps.append(Step(f"sample config {config} (edit it)", lambda: write_file(config, sample, 0o644)))
    steps.append(Step(f"sendmail's config digest beside {config}", partial(write_digest, config)))
    return steps


def write_digest(config_path: str) -> str:
    """Best effort: without a fresh digest sendmail still works, only slower."""
    from agent import config, digest

    try:
        cfg = config.load(config_path)
    except AgentError as exc:
        return f"not written, the config needs fixing first: {exc.message}"
    return "" if digest.write(cfg) else "not written (sendmail parses the TOML until then)"


def link_steps(root: str, path: str, entry: str, dpkg: bool) -> list[Step]:
    target = in_root(root, path)
    if is_our_link(root, path, entry):
        return [Step(f"{target} already runs relay-agent's {entry}", _noop)]
    if path == "/usr/lib/sendmail" and points_at_sendmail(root, path):
        return [Step(f"{target} already links to /usr/sbin/sendmail", _noop)]
    steps = []
    if dpkg:
        cmd = dpkg_divert(root, "--local", "--rename", "--divert", path + ORIG_SUFFIX, "--add", path)
        steps.append(Step(f"divert: {shlex.join(cmd)}", lambda: divert(root, cmd, path)))
    elif os.path.lexists(target):
        steps.append(Step(f"move {target} to {target}{ORIG_SUFFIX}", lambda: move_aside(root, path)))
    link = link_target(path, entry)
    steps.append(Step(f"link {target} -> {link}", lambda: make_link(root, path, link)))
    return steps


def dpkg_divert(root: str, *args: str) -> list[str]:
    return ["dpkg-divert", *([] if root == "/" else [f"--root={root}"]), *args]


def divert(root: str, cmd: list[str], path: str) -> None:
    run(cmd)
    append_manifest(root, f"divert\t{path}")


def move_aside(root: str, path: str) -> None:
    target = in_root(root, path)
    if os.path.lexists(target + ORIG_SUFFIX):
        raise AgentError(f"{target}{ORIG_SUFFIX} exists already: restore or remove it first")
    os.rename(target, target + ORIG_SUFFIX)
    append_manifest(root, f"move\t{path}")


def make_link(root: str, path: str, link: str) -> None:
    target = in_root(root, path)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.lexists(target):  # a dangling leftover of ours; the original is aside
        os.unlink(target)
    os.symlink(link, target)
    append_manifest(root, f"link\t{path}")


ACTIVATE = (
    ["systemctl", "daemon-reload"],
    ["systemd-sysusers", "relay-agent.conf"],
    ["systemd-tmpfiles", "--create", "relay-agent.conf"],
)


def activation_steps(root: str, install: bool) -> list[Step]:
    cmds = ACTIVATE if install else ACTIVATE[:1]
    if systemd_running(root):
        steps = [Step(shlex.join(c), partial(run, c)) for c in cmds]
    else:
        where = "this host" if root == "/" else root
        todo = "; ".join(shlex.join(c) for c in cmds)
        steps = [Step(f"systemd is not running on {where}: run there later: {todo}", _noop)]
    if install:
        steps.append(
            Step(
                f"next: edit {CONFIG}, store the relay password (relay-agent credentials set, or "
                f"{CONFIG_DIR}/relay-password 0600 root), then: systemctl enable --now relay-agent",
                _noop,
            )
        )
    return steps


# --- the uninstall plan ------------------------------------------------------------


def plan_uninstall(root: str, dpkg: bool, purge: bool) -> list[Step]:
    steps = []
    if systemd_running(root):
        cmd = ["systemctl", "disable", "--now", "relay-agent.service"]
        steps.append(Step(shlex.join(cmd), partial(run_quietly, cmd)))
    put_aside = {fields[1]: fields[0] for fields in read_manifest(root) if fields[0] in ("divert", "move")}
    for path, entry in LINKS:
        steps += unlink_steps(root, path, entry, put_aside.get(path), dpkg)
    for path in (f"{STUB_DIR}/sendmail", f"{STUB_DIR}/mailq", STUB_DIR, UNIT, SYSUSERS, TMPFILES):
        if os.path.lexists(in_root(root, path)):
            steps.append(Step(f"remove {in_root(root, path)}", partial(remove, in_root(root, path))))
    steps += activation_steps(root, install=False)
    kept = [in_root(root, p) for p in (CONFIG_DIR, QUEUE, MAILDROP) if os.path.lexists(in_root(root, p))]
    if purge:
        for path in kept:
            steps.append(Step(f"purge {path}", partial(shutil.rmtree, path)))
        if lookup_ids(root) is not None:
            cmd = ["userdel", USER] if root == "/" else ["userdel", "--prefix", root, USER]
            steps.append(Step(f"remove user: {shlex.join(cmd)}", partial(run, cmd)))
    elif kept:
        steps.append(Step(f"keep {', '.join(kept)} (config, keys, queued mail): --purge removes them", _noop))
    manifest_dir = in_root(root, os.path.dirname(MANIFEST))
    if os.path.lexists(manifest_dir):
        steps.append(Step(f"remove {manifest_dir}", partial(shutil.rmtree, manifest_dir)))
    return steps


def unlink_steps(root: str, path: str, entry: str, how: str | None, dpkg: bool) -> list[Step]:
    target = in_root(root, path)
    steps = []
    if is_our_link(root, path, entry):
        steps.append(Step(f"remove link {target}", partial(os.unlink, target)))
    if how == "divert" or (how is None and dpkg and is_diverted(root, path)):
        cmd = dpkg_divert(root, "--local", "--rename", "--divert", path + ORIG_SUFFIX, "--remove", path)
        steps.append(Step(f"restore: {shlex.join(cmd)}", partial(run, cmd)))
    elif os.path.lexists(target + ORIG_SUFFIX):
        steps.append(Step(f"restore {target} from {target}{ORIG_SUFFIX}", partial(restore, target)))
    return steps


def is_diverted(root: str, path: str) -> bool:
    cmd = (
        ["dpkg-divert", "--truename", path]
        if root == "/"
        else ["dpkg-divert", f"--root={root}", "--truename", path]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == path + ORIG_SUFFIX


def restore(target: str) -> None:
    if os.path.lexists(target):
        raise AgentError(f"{target} exists and is not relay-agent's: {target}{ORIG_SUFFIX} left in place")
    os.rename(target + ORIG_SUFFIX, target)


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)  # the stub dir, emptied by the steps before
    else:
        os.unlink(path)


def run_quietly(cmd: list[str]) -> None:
    # Stopping a unit that was never enabled or started is not an error for uninstall.
    subprocess.run(cmd, capture_output=True, check=False)


# --- running a plan ---------------------------------------------------------------


def execute(steps: list[Step], dry_run: bool, out: Callable[[str], None] = print) -> None:
    """Print each step and run it; with dry_run only print. Stops at the first failure."""
    for step in steps:
        out(f"{'would: ' if dry_run else ''}{step.description}")
        if dry_run:
            continue
        try:
            note = step.action()
        except PermissionError as exc:
            raise PolicyError(f"{step.description}: {exc.strerror}") from None
        except OSError as exc:
            raise TempError(f"{step.description}: {exc.strerror or exc}") from None
        if isinstance(note, str) and note:
            out(f"  {note}")
