"""The Debian package `./dev deb` builds: control fields, files and modes (dpkg-deb -I/-c), lintian,
the pinned dependencies it carries, and the newaliases stub."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from agent.submit import stub

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
LOCK = ROOT / "packaging" / "requirements.lock"
SITE = "./usr/lib/relay-agent/lib/python3.11/site-packages"

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")


@functools.cache
def built_deb() -> Path:
    """Build the package once per test run, as `./dev deb` does (tests/test_deb_install.py too)."""
    proc = subprocess.run(
        [PYTHON, str(ROOT / "packaging" / "build_deb.py")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"dist/relay-agent_[^_]+_[a-z0-9]+\.deb", name), name
    return ROOT / name


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


@functools.cache
def listing() -> dict[str, tuple[str, str, str]]:
    """path -> (mode string, owner/group, link target or "") from `dpkg-deb -c`."""
    out = {}
    for line in dpkg_deb("-c", str(built_deb())).splitlines():
        mode, owner, _size, _date, _time, rest = line.split(None, 5)
        path, _, target = rest.partition(" -> ")
        out[path.rstrip("/") or "."] = (mode, owner, target)
    return out


@needs_dpkg
def test_control_fields_are_an_mta_s() -> None:
    deb = str(built_deb())

    def field(name: str) -> str:
        return dpkg_deb("-f", deb, name).strip()

    upstream = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert field("Package") == "relay-agent"
    assert field("Version").startswith(f"{upstream}-") and field("Architecture") == arch
    assert Path(deb).name == f"relay-agent_{field('Version')}_{arch}.deb"
    for name in ("Provides", "Conflicts", "Replaces"):
        assert field(name) == "mail-transport-agent", name
    depends = [d.strip() for d in field("Depends").split(",")]
    assert "python3 (>= 3.11)" in depends and "adduser" in depends
    assert any(re.fullmatch(r"libc6 \(>= 2\.\d+\)", d) for d in depends), depends
    assert field("Section") == "mail" and field("Maintainer")
    info = dpkg_deb("-I", deb)
    for script in ("preinst", "postinst", "prerm", "postrm"):
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*\s+{script}\s+#!/bin/sh$", info, re.M), script
    assert dpkg_deb("--info", deb, "conffiles").split() == ["/etc/relay-agent/config.toml"]


@needs_dpkg
def test_files_and_modes() -> None:
    files = listing()
    expect = {
        "./usr/sbin/sendmail": "-rwxr-xr-x",
        "./usr/bin/mailq": "-rwxr-xr-x",
        "./usr/sbin/newaliases": "-rwxr-xr-x",
        "./usr/lib/relay-agent/bin/relay-agent": "-rwxr-xr-x",
        "./lib/systemd/system/relay-agent.service": "-rw-r--r--",
        "./usr/lib/sysusers.d/relay-agent.conf": "-rw-r--r--",
        "./usr/lib/tmpfiles.d/relay-agent.conf": "-rw-r--r--",
        "./etc/relay-agent/config.toml": "-rw-r--r--",
        "./usr/share/doc/relay-agent/README.md": "-rw-r--r--",
        "./usr/share/doc/relay-agent/copyright": "-rw-r--r--",
        "./usr/share/doc/relay-agent/changelog.Debian.gz": "-rw-r--r--",
        "./usr/share/doc/relay-agent/examples/config.toml": "-rw-r--r--",
        "./usr/lib/relay-agent/pyvenv.cfg": "-rw-r--r--",
        f"{SITE}/agent/__init__.py": "-rw-r--r--",
    }
    for page in (ROOT / "man").glob("*.[0-9]"):  # whatever man/ holds, gzipped into its section
        expect[f"./usr/share/man/man{page.suffix[1:]}/{page.name}.gz"] = "-rw-r--r--"
    for path, mode in expect.items():
        assert path in files, path
        assert files[path][0] == mode, (path, files[path])
    assert files["./usr/bin/relay-agent"][2] == "../lib/relay-agent/bin/relay-agent"
    assert files["./usr/lib/sendmail"][2] == "../sbin/sendmail"
    assert files["./usr/lib/relay-agent/bin/python3"][2] == "../../../bin/python3"
    for path, (mode, owner, _target) in files.items():
        assert owner == "root/root", path
        assert mode[0] in "-dl", (path, mode)
        if mode[0] != "l":  # no setuid/setgid/sticky, nothing group- or world-writable
            assert not set(mode[1:]) & set("sStT") and "w" not in mode[5] + mode[8], (path, mode)
        # bytecode is compiled by postinst; a shipped copy would name the build directory
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
    assert not any(p.startswith(("./var/", "./run/")) for p in files)  # made by postinst


@needs_dpkg
def test_stubs_run_the_package_s_python(tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(built_deb()), str(tmp_path)], check=True)
    sendmail = (tmp_path / "usr/sbin/sendmail").read_text()
    site = "/usr/lib/relay-agent/lib/python3.11/site-packages"
    assert sendmail.startswith("#!/usr/lib/relay-agent/bin/python -SE\n")
    assert f"sys.path[0:1] = [{site!r}]" in sendmail
    assert f"{site}/agent/__pycache__/sendmail.cpython-311.bundle" in sendmail  # the fast path
    unit = (tmp_path / "lib/systemd/system/relay-agent.service").read_text()
    assert "ExecStart=/usr/lib/relay-agent/bin/relay-agent run\n" in unit
    # nothing in the package names the directory it was built in
    hits = subprocess.run(["grep", "-rlI", str(ROOT), str(tmp_path)], capture_output=True, text=True)
    assert hits.stdout == ""


@needs_dpkg
def test_lintian_has_no_errors_or_unexplained_warnings() -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (./dev test installs it)")
    proc = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", str(built_deb())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not re.search(r"^[EW]: ", proc.stdout, re.M), proc.stdout


def test_every_lintian_override_has_a_comment() -> None:
    lines = (ROOT / "packaging" / "lintian-overrides").read_text().splitlines()
    overrides = [i for i, line in enumerate(lines) if line.startswith("relay-agent: ")]
    assert overrides
    for i in overrides:
        j = i - 1
        while j >= 0 and lines[j].startswith("relay-agent: "):
            j -= 1  # one comment may explain a group of overrides
        assert j >= 0 and lines[j].startswith("#"), lines[i]


def locked() -> dict[str, str]:
    text = LOCK.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}$", text, re.M))
    assert len(pins) == len(re.findall(r"^[^#\s]", text, re.M)), "every line pinned with a hash"
    return {norm(k): v for k, v in pins.items()}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_pins_every_runtime_dependency() -> None:
    pins = locked()
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name and norm(name[0]) in pins, requirement


@needs_dpkg
def test_package_carries_exactly_the_locked_releases() -> None:
    carried = {}
    for path in listing():
        m = re.fullmatch(rf"{re.escape(SITE)}/([^/]+)-([^-/]+)\.dist-info", path)
        if m:
            carried[norm(m[1])] = m[2]
    assert (
        carried.pop("relay-agent")
        == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    )
    assert carried == locked()


def test_newaliases_stub_says_where_aliases_live(tmp_path: Path) -> None:
    script = tmp_path / "newaliases"
    script.write_text(stub.render("newaliases", PYTHON, [str(ROOT)]))
    script.chmod(0o755)
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == stub.NEWALIASES_LINE + "\n" and "[aliases]" in proc.stdout


@pytest.mark.parametrize(
    ("diversions", "code"),
    [
        ("local diversion of /usr/sbin/sendmail to /usr/sbin/sendmail.relay-agent-orig\n", 1),
        ("diversion of /usr/share/man/man1/x.1.gz to /usr/share/man/man1/x.distrib.1.gz by y\n", 0),
    ],
)
def test_preinst_refuses_a_pip_install_s_diversions(tmp_path: Path, diversions: str, code: int) -> None:
    fake = tmp_path / "dpkg-divert"  # what `dpkg-divert --list` prints on that host
    fake.write_text(f"#!/bin/sh\nprintf '%s' '{diversions}'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["sh", str(ROOT / "packaging/preinst"), "install"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == code, proc.stderr
    assert ("relay-agent uninstall" in proc.stderr) == bool(code)
