"""agent.submit.bytecode_bundle: the stub runs sendmail's modules from one bundle, only while it is
current and could only have been written by root or by us; otherwise importlib.

Each case runs the rendered stub on a copy of the package, under `-X importtime`:
a module that importlib loaded is listed there, one the bundle ran is not.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

from agent.submit import bytecode_bundle, stub
from tests.support.agent_env import AgentEnv, traversable_tmp

REPO = Path(__file__).resolve().parents[1]
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
MAGIC = importlib.util.MAGIC_NUMBER
MESSAGE = b"From: app@example.com\nTo: ops@example.com\nSubject: hi\n\nbody\n"


class Site:
    """A copy of the package, its sendmail stub and a config whose maildrop is in `root`."""

    def __init__(self, root: Path, python: str = sys.executable) -> None:
        shutil.copytree(REPO / "agent", root / "agent", ignore=shutil.ignore_patterns("__pycache__"))
        self.package = root / "agent"
        self.bundle = Path(bytecode_bundle.bundle_path(str(self.package)))
        self.python = python
        self.stub = root / "sendmail"
        self.stub.write_text(stub.render("sendmail", python, [str(root)]))
        self.stub.chmod(0o755)
        (root / "env").mkdir()
        self.env = AgentEnv(root / "env", dkim=False, extra={"policy": {"unsigned": "send"}})
        self.env.maildrop.mkdir(mode=0o1733)
        self.env.maildrop.chmod(0o1733)

    def run(self, prefix: tuple[str, ...] = ()) -> tuple[set[str], str]:
        """Fast-path modules importlib loaded, and stderr's other lines; the mail must be queued."""
        before = len(os.listdir(self.env.maildrop))
        res = subprocess.run(
            [*prefix, self.python, "-SE", "-X", "importtime", str(self.stub), "-t", "-i"],
            input=MESSAGE,
            capture_output=True,
            env={"RELAY_AGENT_CONFIG": str(self.env.config)},
            timeout=60,
        )
        assert res.returncode == 0, res.stderr.decode()[-2000:]
        assert len(os.listdir(self.env.maildrop)) == before + 1
        lines = res.stderr.decode().splitlines()
        imported = {ln.rsplit("|", 1)[1].strip() for ln in lines if ln.startswith("import time:")}
        other = "\n".join(ln for ln in lines if not ln.startswith("import time:"))
        return imported & FAST, other

    def rebundle(self, **replace: str) -> None:
        """A bundle as `refresh` writes it, with the named modules' code replaced."""
        data = bytecode_bundle.build(str(self.package))
        code, entries = marshal.loads(data[len(MAGIC) :])
        entries = tuple(
            (n, s, m, z, compile(replace[n], s, "exec") if n in replace else c) for n, s, m, z, c in entries
        )
        self.bundle.parent.mkdir(exist_ok=True)
        self.bundle.write_bytes(MAGIC + marshal.dumps((code, entries)))
        self.bundle.chmod(0o644)


FAST = set(bytecode_bundle.SENDMAIL)


def test_first_run_writes_the_bundle_and_later_runs_import_nothing(tmp_path: Path) -> None:
    site = Site(tmp_path)
    imported, _ = site.run()
    assert imported == FAST  # no bundle yet: importlib, then refresh writes one
    assert site.bundle.stat().st_mode & 0o777 == 0o644
    imported, other = site.run()
    assert imported == set() and other == ""
    imported, _ = site.run()
    assert imported == set()


def test_an_edited_source_means_importlib_and_a_new_bundle(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run()
    src = site.package / "mail" / "headers.py"
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # 1 ns later is another file
    old = site.bundle.read_bytes()
    imported, _ = site.run()
    assert imported == FAST  # all or nothing: no module of a stale bundle ran
    assert site.bundle.read_bytes() != old
    assert site.run()[0] == set()


def test_a_bundle_others_could_have_written_is_never_run(tmp_path: Path) -> None:
    site = Site(tmp_path)
    marker = tmp_path / "ran"
    evil = (site.package / "errors.py").read_text() + f"\nopen({str(marker)!r}, 'w').close()\n"

    site.rebundle(**{"agent.errors": evil})
    assert site.run()[0] == set()  # root's own 0644 bundle does run: the checks below can fail
    assert marker.exists()
    marker.unlink()

    for spoil in (
        lambda: site.bundle.chmod(0o664),  # group-writable
        lambda: site.bundle.chmod(0o646),  # world-writable
        lambda: os.chown(site.bundle, 65534, 65534),  # another user's
    ):
        site.rebundle(**{"agent.errors": evil})
        spoil()
        imported, _ = site.run()
        assert not marker.exists() and imported == FAST

    site.rebundle(**{"agent.errors": evil})
    real = site.bundle.with_suffix(".real")
    site.bundle.rename(real)
    site.bundle.symlink_to(real)  # root's own file, but reached through a link
    imported, _ = site.run()
    assert not marker.exists() and imported == FAST


def test_foreign_or_garbage_bundles_fall_back_to_importlib(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run()
    good = site.bundle.read_bytes()
    for data in (b"\0\0\r\n" + good[4:], good[:4] + b"\xff" * 64, good[: len(good) // 2], b""):
        site.bundle.write_bytes(data)
        site.bundle.chmod(0o644)
        imported, other = site.run()
        assert imported == FAST and "Traceback" not in other
        assert site.run()[0] == set()  # rebuilt by refresh


def test_nobody_runs_roots_bundle_and_cannot_replace_it() -> None:
    with traversable_tmp("relay-agent-fastload-") as root:
        site = Site(root, "/usr/bin/python3")  # nobody cannot reach root's venv
        site.run()  # root writes the bundle
        assert site.bundle.stat().st_uid == 0
        assert site.run(tuple(AS_NOBODY))[0] == set()

        src = site.package / "submit" / "config_cache.py"
        st = src.stat()
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        old = site.bundle.read_bytes()
        imported, other = site.run(tuple(AS_NOBODY))  # stale: importlib, and no write
        assert imported == FAST and "Traceback" not in other
        assert site.bundle.read_bytes() == old


def test_preload_leaves_nothing_behind_when_a_module_fails(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.rebundle(**{"agent.mail.headers": "raise RuntimeError('boom')"})
    probe = (
        "import marshal, sys\n"
        f"sys.path[0:1] = [{str(tmp_path)!r}]\n"
        f"data = open({str(site.bundle)!r}, 'rb').read()\n"
        f"code, entries = marshal.loads(data[{len(MAGIC)}:])\n"
        "try:\n"
        "    type(lambda: 0)(code, {'sys': sys, 'posix': __import__('posix')})(entries)\n"
        "except RuntimeError:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('agent')))\n"
    )
    out = subprocess.run([sys.executable, "-SE", "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bundled_modules_lose_nothing_to_optimize_2() -> None:
    """The bundle is compiled with optimize=2, which drops `assert` statements and
    docstrings: none of its modules may rely on either."""
    import ast

    for name in bytecode_bundle.SENDMAIL:
        path = bytecode_bundle.source_path(str(REPO / "agent"), name)
        tree = ast.parse(Path(path).read_text(), path)
        asserts = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
        doc_reads = [
            n.lineno
            for n in ast.walk(tree)
            if (isinstance(n, ast.Attribute) and n.attr == "__doc__")
            or (isinstance(n, ast.Name) and n.id in ("__doc__", "__debug__"))
        ]
        assert not asserts and not doc_reads, (path, asserts, doc_reads)
    # and the bundle really is built that way: no docstring survives in it
    _, entries = marshal.loads(bytecode_bundle.build(str(REPO / "agent"))[len(MAGIC) :])
    errors = next(code for name, _, _, _, code in entries if name == "agent.errors")
    assert not any(isinstance(c, str) and "sysexit" in c for c in errors.co_consts)


def test_a_stub_written_before_the_package_split_still_queues_mail(tmp_path: Path) -> None:
    """An upgrade must not break /usr/sbin/sendmail before `install` runs again: a stub rendered by
    an earlier version imports agent.sendmail and, with its bundle stale, agent.fastload."""
    site = Site(tmp_path)
    old = site.stub.read_text()
    old = old.replace("from agent.submit.sendmail import main", "from agent.sendmail import main")
    old = old.replace(
        "from agent.submit import bytecode_bundle\n    bytecode_bundle.refresh(",
        "from agent import fastload\n    fastload.refresh(",
    )
    assert "agent.submit" not in old
    site.stub.write_text(old)
    gone = str(site.package / "sendmail_args.py")  # a module of the flat layout
    stale = (("agent.sendmail_args", gone, 0, 0, compile("", "x", "exec")),)
    site.bundle.parent.mkdir(exist_ok=True)
    site.bundle.write_bytes(MAGIC + marshal.dumps((bytecode_bundle.preload.__code__, stale)))
    site.bundle.chmod(0o644)
    imported, _ = site.run()  # the old bundle's sources are gone: importlib, then a fresh bundle
    assert imported == FAST
    imported, other = site.run()
    assert imported == set() and other == ""
