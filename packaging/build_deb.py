"""Build dist/relay-agent_<version>_<arch>.deb from this checkout with dpkg-deb (`./dev deb`).

Layout of the package:
- /usr/lib/relay-agent: a venv made from Debian's /usr/bin/python3 holding relay-agent and the
  releases pinned in packaging/requirements.lock (hash-checked); pip's own scripts are dropped,
  /usr/lib/relay-agent/bin/relay-agent is ours (the unit's ExecStart, /usr/bin/relay-agent links
  to it). No bytecode: postinst compiles it and builds sendmail's bundle.
- /usr/sbin/sendmail, /usr/bin/mailq, /usr/sbin/newaliases: the stubs of agent/submit/stub.py.
- the unit, its sysusers.d/tmpfiles.d snippets, /etc/relay-agent/config.toml (a conffile), the
  manual pages in man/, and /usr/share/doc/relay-agent.

Run with the interpreter of the project's venv (it imports agent from this checkout).
"""

from __future__ import annotations

import email.parser
import gzip
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
LIB = "/usr/lib/relay-agent"
PYTHON = f"{LIB}/bin/python"
SITE = f"{LIB}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
UNIT_DIR = "/lib/systemd/system"  # Debian 12's dpkg does not yet ship units under /usr
STUBS = (
    ("sendmail", "/usr/sbin/sendmail"),
    ("mailq", "/usr/bin/mailq"),
    ("newaliases", "/usr/sbin/newaliases"),
)
LINKS = (  # (path, target): the other names callers use
    ("/usr/lib/sendmail", "../sbin/sendmail"),
    ("/usr/bin/newaliases", "../sbin/newaliases"),
    ("/usr/bin/relay-agent", "../lib/relay-agent/bin/relay-agent"),
)
LAUNCHER = f"#!{PYTHON} -I\nimport sys\n\nfrom agent.main import main\n\nsys.exit(main())\n"

sys.path.insert(0, str(ROOT))
from agent.install.files import render_unit  # noqa: E402  (this checkout's agent)
from agent.submit import stub  # noqa: E402


def run(*cmd: str | Path, **kw: object) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)  # type: ignore[call-overload]


def debian_version() -> str:
    """packaging/changelog's version, checked against pyproject.toml's."""
    upstream = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run(
        ["dpkg-parsechangelog", "-l", str(PACKAGING / "changelog"), "-S", "Version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if out.rpartition("-")[0] != upstream:
        sys.exit(f"packaging/changelog is at {out}, pyproject.toml at {upstream}: add a changelog entry")
    return out


def make_venv(stage: Path, work: Path) -> None:
    """The venv at its final path inside `stage`, with the locked wheels and relay-agent's."""
    venv = stage / LIB.lstrip("/")
    run("/usr/bin/python3", "-m", "venv", "--without-pip", venv)
    wheels = work / "wheels"
    pip = [sys.executable, "-m", "pip"]
    lock = PACKAGING / "requirements.lock"
    run(*pip, "wheel", "--quiet", "--no-deps", "--require-hashes", "-r", lock, "-w", wheels)
    run(*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT)
    target = ["--python", venv / "bin" / "python", "install", "--quiet", "--no-index", "--no-deps"]
    run(*pip, *target, "--no-compile", *sorted(wheels.glob("*.whl")))


def tidy_venv(stage: Path) -> None:
    """Drop what names the staging path or is not ours to ship: pip's scripts, bytecode."""
    venv = stage / LIB.lstrip("/")
    for path in (venv / "bin").iterdir():
        if not path.is_symlink():  # keep python, python3, python3.11 (links to /usr/bin/python3)
            path.unlink()
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(
        "".join(line for line in cfg.read_text().splitlines(True) if not line.startswith("command"))
    )
    for cache in list(venv.rglob("__pycache__")):
        shutil.rmtree(cache)
    for extra in list(venv.rglob("direct_url.json")):  # records the build directory
        extra.unlink()
    for unused in ("share", "include"):  # dkimpy's man pages for scripts not shipped; no C headers
        shutil.rmtree(venv / unused, ignore_errors=True)
    for vcs in list(venv.rglob(".gitignore")):
        vcs.unlink()
    strip(venv)
    # the interpreter by a relative link, as Debian wants links inside /usr (the stage's copy then
    # points at a python3 the stage does not have: the import check above ran before)
    (venv / "bin" / "python3").unlink()
    (venv / "bin" / "python3").symlink_to(os.path.relpath("/usr/bin/python3", f"{LIB}/bin"))
    put(stage, f"{LIB}/bin/relay-agent", LAUNCHER, 0o755)


def strip(venv: Path) -> None:
    """Debian ships no symbol tables: strip the wheels' extension modules, then import each one
    (auditwheel edits these files; a strip that broke one must fail the build, not the host)."""
    modules = sorted(venv.rglob("*.so"))
    for so in modules:
        run("strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", so)
    site = venv / SITE.removeprefix(f"{LIB}/")
    names = [".".join(so.relative_to(site).with_suffix("").with_suffix("").parts) for so in modules]
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\nimport agent.main"
    run(venv / "bin" / "python", "-I", "-B", "-c", code, *names)


def put(stage: Path, path: str, text: str | bytes, mode: int) -> None:
    dest = stage / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(text.encode() if isinstance(text, str) else text)
    dest.chmod(mode)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)  # -9n: reproducible, as Debian wants


def add_files(stage: Path) -> None:
    for entry, path in STUBS:
        put(stage, path, stub.render(entry, PYTHON, [SITE], root=str(stage)), 0o755)
    for path, target in LINKS:
        link = stage / path.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    unit = render_unit((ROOT / "systemd/relay-agent.service").read_text(), f"{LIB}/bin")
    put(stage, f"{UNIT_DIR}/relay-agent.service", unit, 0o644)
    put(
        stage,
        "/usr/lib/sysusers.d/relay-agent.conf",
        (ROOT / "systemd/relay-agent.sysusers").read_bytes(),
        0o644,
    )
    put(
        stage,
        "/usr/lib/tmpfiles.d/relay-agent.conf",
        (ROOT / "systemd/relay-agent.tmpfiles").read_bytes(),
        0o644,
    )
    put(stage, "/etc/relay-agent/config.toml", (ROOT / "examples/config.toml").read_bytes(), 0o644)
    add_manpages(stage)


def add_manpages(stage: Path) -> None:
    """man/NAME.N, gzipped into manN/; whatever man/ holds (sendmail(8) also answers newaliases)."""
    for page in sorted((ROOT / "man").glob("*.[0-9]")):
        section = page.suffix[1:]
        put(stage, f"/usr/share/man/man{section}/{page.name}.gz", gz(page.read_bytes()), 0o644)
    man8 = stage / "usr/share/man/man8"
    if (man8 / "sendmail.8.gz").exists() and not (man8 / "newaliases.8.gz").exists():
        (man8 / "newaliases.8.gz").symlink_to("sendmail.8.gz")


def add_docs(stage: Path) -> None:
    doc = "/usr/share/doc/relay-agent"
    put(stage, f"{doc}/README.md", (ROOT / "README.md").read_bytes(), 0o644)
    put(stage, f"{doc}/changelog.Debian.gz", gz((PACKAGING / "changelog").read_bytes()), 0o644)
    put(stage, f"{doc}/copyright", copyright_text(stage), 0o644)
    for src in sorted((ROOT / "examples").rglob("*")):
        if src.is_file() and "__pycache__" not in src.parts:
            rel = src.relative_to(ROOT)
            put(stage, f"{doc}/{rel}", src.read_bytes(), 0o644)


def copyright_text(stage: Path) -> str:
    """packaging/copyright with the bundled packages and the license each declares."""
    lines = []
    for meta in sorted((stage / SITE.lstrip("/")).glob("*.dist-info/METADATA")):
        msg = email.parser.HeaderParser().parsestr(meta.read_text(encoding="utf-8", errors="replace"))
        if msg["Name"] == "relay-agent":
            continue
        lic = msg["License-Expression"] or _classifier_license(msg) or (msg["License"] or "").split("\n")[0]
        lines.append(f" {msg['Name']} {msg['Version']}: {lic.strip() or 'see its .dist-info'}")
    return (PACKAGING / "copyright").read_text().replace("@BUNDLED@", "\n".join(lines))


def _classifier_license(msg: email.message.Message) -> str:
    for value in msg.get_all("Classifier") or []:
        if value.startswith("License :: OSI Approved :: "):
            return value.rpartition(" :: ")[2]
    return ""


def min_glibc(stage: Path) -> str:
    """libc6 (>= X) from the manylinux tags of the binary wheels (glibc they were built against)."""
    best = (2, 17)
    for wheel in (stage / SITE.lstrip("/")).glob("*.dist-info/WHEEL"):
        for m in re.finditer(r"manylinux_(\d+)_(\d+)", wheel.read_text()):
            best = max(best, (int(m[1]), int(m[2])))
    return f"libc6 (>= {best[0]}.{best[1]})"


def control(stage: Path, version: str, arch: str) -> None:
    size = sum(p.lstat().st_size for p in stage.rglob("*") if not p.is_dir()) // 1024
    text = (PACKAGING / "control.in").read_text()
    for key, value in (("VERSION", version), ("ARCH", arch), ("INSTALLED_SIZE", str(size))):
        text = text.replace(f"@{key}@", value)
    text = text.replace("@LIBC@", min_glibc(stage))
    debian = stage / "DEBIAN"
    put(stage, "/DEBIAN/control", text, 0o644)
    put(stage, "/DEBIAN/conffiles", (PACKAGING / "conffiles").read_bytes(), 0o644)
    for script in ("preinst", "postinst", "prerm", "postrm"):
        put(stage, f"/DEBIAN/{script}", (PACKAGING / script).read_bytes(), 0o755)
    lines = []
    for path in sorted(stage.rglob("*")):
        if path.is_file() and not path.is_symlink() and debian not in path.parents:
            lines.append(f"{_md5(path)}  {path.relative_to(stage)}\n")
    put(stage, "/DEBIAN/md5sums", "".join(lines), 0o644)


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def lintian_overrides(stage: Path) -> None:
    """packaging/lintian-overrides (a comment for each), where lintian looks for it."""
    text = (PACKAGING / "lintian-overrides").read_text()
    put(stage, "/usr/share/lintian/overrides/relay-agent", text, 0o644)


def normalize(stage: Path) -> None:
    """Directories 0755, files 0644 or 0755 (executable by anyone or no one): the build's umask
    and the wheels' modes must not leak into the package."""
    lib = stage / SITE.lstrip("/")
    for path in [stage, *stage.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        elif lib in path.parents:  # modules and shared objects: loaded, never run
            path.chmod(0o644)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)


def main() -> int:
    version = debian_version()
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    work = ROOT / "build" / "deb"
    shutil.rmtree(work, ignore_errors=True)
    stage = work / "root"
    stage.mkdir(parents=True)
    make_venv(stage, work)
    tidy_venv(stage)
    add_files(stage)
    add_docs(stage)
    lintian_overrides(stage)
    normalize(stage)
    control(stage, version, arch)
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    out = dist / f"relay-agent_{version}_{arch}.deb"
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, out)
    print(out.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
