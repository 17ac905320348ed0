"""The install manifest: one line per file install put aside or linked, so uninstall can undo it
without dpkg's help (or with it, when the manifest says `divert`)."""

from __future__ import annotations

import os
import shutil
from functools import partial

from agent import durable
from agent.install.layout import MANIFEST, in_root
from agent.install.steps import Step


def append_manifest(root: str, line: str) -> None:
    path = in_root(root, MANIFEST)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    durable.append(path, (line + "\n").encode("utf-8"), mode=0o644)


def read_manifest(root: str) -> list[list[str]]:
    try:
        with open(in_root(root, MANIFEST), encoding="utf-8") as fh:
            return [line.split("\t") for line in fh.read().splitlines() if line]
    except FileNotFoundError:
        return []


def put_aside(root: str) -> dict[str, str]:
    """path -> how it was put aside ("divert" or "move")."""
    return {fields[1]: fields[0] for fields in read_manifest(root) if fields[0] in ("divert", "move")}


def manifest_removal_steps(root: str) -> list[Step]:
    manifest_dir = in_root(root, os.path.dirname(MANIFEST))
    if not os.path.lexists(manifest_dir):
        return []
    return [Step(f"remove {manifest_dir}", partial(shutil.rmtree, manifest_dir))]
