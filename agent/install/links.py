"""The public sendmail/mailq paths (/usr/sbin/sendmail, ...) as links to our stubs: made on install
after the other MTA's file is put aside, removed on uninstall before it comes back."""

from __future__ import annotations

import os
from functools import partial

from agent.install.aside import aside_steps, restore_steps
from agent.install.layout import LINKS, STUB_DIR, in_root
from agent.install.manifest import append_manifest, put_aside
from agent.install.steps import Step, noop


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


def link_steps(root: str, dpkg: bool) -> list[Step]:
    return [step for path, entry in LINKS for step in _link_steps(root, path, entry, dpkg)]


def _link_steps(root: str, path: str, entry: str, dpkg: bool) -> list[Step]:
    target = in_root(root, path)
    if is_our_link(root, path, entry):
        return [Step(f"{target} already runs relay-agent's {entry}", noop)]
    if path == "/usr/lib/sendmail" and points_at_sendmail(root, path):
        return [Step(f"{target} already links to /usr/sbin/sendmail", noop)]
    link = link_target(path, entry)
    return [
        *aside_steps(root, path, dpkg),
        Step(f"link {target} -> {link}", lambda: make_link(root, path, link)),
    ]


def make_link(root: str, path: str, link: str) -> None:
    target = in_root(root, path)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.lexists(target):  # a dangling leftover of ours; the original is aside
        os.unlink(target)
    os.symlink(link, target)
    append_manifest(root, f"link\t{path}")


def unlink_steps(root: str, dpkg: bool) -> list[Step]:
    aside = put_aside(root)
    return [step for path, entry in LINKS for step in _unlink_steps(root, path, entry, aside.get(path), dpkg)]


def _unlink_steps(root: str, path: str, entry: str, how: str | None, dpkg: bool) -> list[Step]:
    target = in_root(root, path)
    steps = []
    if is_our_link(root, path, entry):
        steps.append(Step(f"remove link {target}", partial(os.unlink, target)))
    return steps + restore_steps(root, path, how, dpkg)
