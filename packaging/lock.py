"""Write packaging/requirements.lock: relay-agent's runtime dependencies, pinned with their hashes.

The Debian package carries these exact releases (Debian 12 lacks some, e.g. aiolimiter, and ships
older ones of others). pip resolves pyproject.toml's [project] dependencies for the interpreter
running this script, which should be Debian 12's python3 (./dev lock runs it with the venv made
from it), and reports the files it would fetch; nothing is installed.

    ./dev lock        # after changing a dependency in pyproject.toml; commit the result
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "packaging" / "requirements.lock"
HEADER = """\
# relay-agent's runtime dependencies for the Debian package (./dev deb), pinned: one release
# each, with the sha256 of the file pip chose for Debian 12's python3.11 on {arch}.
# Made by `./dev lock` (packaging/lock.py) from pyproject.toml; do not edit by hand.
"""


def resolve() -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        subprocess.run([*cmd, "--report", str(report), str(ROOT)], check=True)
        items: list[dict[str, object]] = json.loads(report.read_text())["install"]
    return items


def lines(items: list[dict[str, object]]) -> list[str]:
    out = []
    for item in items:
        meta = item["metadata"]
        download = item["download_info"]
        assert isinstance(meta, dict) and isinstance(download, dict)
        if meta["name"] == "relay-agent":
            continue
        digest = download["archive_info"]["hashes"]["sha256"]
        out.append(f"{meta['name'].lower()}=={meta['version']} \\\n    --hash=sha256:{digest}")
    return sorted(out)


def main() -> int:
    import platform

    text = HEADER.format(arch=platform.machine()) + "\n".join(lines(resolve())) + "\n"
    LOCK.write_text(text)
    print(f"wrote {LOCK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
