"""agent.fastload: sendmail's modules from their bytecode, only while it matches the source.

Each case runs in a fresh `python -SE` on a copy of the package, so the test's own
imports of `agent` cannot stand in for what the stub does.
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from agent import fastload

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys
sys.path[0:1] = [sys.argv[1]]
from agent import fastload
n = fastload.preload()
import agent.sendmail, agent.maildrop_write
from agent.sendmail_args import parse
opts = parse(["-t", "-i", "-f", "a@example.com"], "sendmail")
ours = {m: m in sys.modules and sys.modules[m].__spec__ is None for m in fastload.SENDMAIL}
print(json.dumps({"loaded": n, "sender": opts.sender, "specs": ours}))
"""


def copy_package(tmp: Path) -> Path:
    pkg = tmp / "agent"
    shutil.copytree(
        REPO / "agent", pkg, ignore=shutil.ignore_patterns("__pycache__", "_systemd", "_examples")
    )
    assert compileall.compile_dir(str(pkg), quiet=1)
    return pkg


def probe(root: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-SE", "-c", PROBE, str(root)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_fresh_bytecode_loads_every_listed_module_and_they_work(tmp_path: Path) -> None:
    copy_package(tmp_path)
    got = probe(tmp_path)
    assert got["loaded"] == len(fastload.SENDMAIL)
    assert got["sender"] == "a@example.com"
    assert all(got["specs"].values())  # type: ignore[union-attr]  # ours, not importlib's


def test_a_changed_source_ends_the_preload_and_imports_normally(tmp_path: Path) -> None:
    pkg = copy_package(tmp_path)
    changed = fastload.SENDMAIL.index("agent.headers")
    src = pkg / "headers.py"
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # edited after compiling
    got = probe(tmp_path)
    assert got["loaded"] == changed
    assert got["sender"] == "a@example.com"
    specs = got["specs"]
    assert isinstance(specs, dict)
    assert specs["agent.headers"] is False  # imported by importlib, from the .py


def test_corrupt_or_foreign_bytecode_is_never_executed(tmp_path: Path) -> None:
    pkg = copy_package(tmp_path)
    [pyc] = (pkg / "__pycache__").glob("errors.*.pyc")
    data = pyc.read_bytes()
    pyc.write_bytes(b"\0\0\0\0" + data[4:])  # another interpreter's magic: importlib recompiles
    assert probe(tmp_path)["loaded"] == 0
    pyc.write_bytes(data[:16] + b"\xff" * 40)  # the right header, garbage after it
    code = (
        f"import sys; sys.path[0:1] = [{str(tmp_path)!r}]\n"
        + "from agent import fastload\nprint(fastload.preload())"
    )
    out = subprocess.run([sys.executable, "-SE", "-c", code], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout.strip()) == (0, "0"), out.stderr
