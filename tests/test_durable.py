"""agent.durable: the one durable-write primitive, and the rule that nothing else calls fsync."""

from __future__ import annotations

import ast
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import durable

AGENT = Path(__file__).resolve().parents[1] / "agent"
SYNC_CALLS = {("os", "fsync"), ("os", "fdatasync"), ("posix", "fsync"), ("posix", "fdatasync")}


def sync_calls(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, name) of each call of os/posix .fsync/.fdatasync, also as a bare imported name."""
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "posix"):
            imported |= {a.asname or a.name for a in node.names if a.name in ("fsync", "fdatasync")}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if (
            isinstance(fn, ast.Attribute)
            and isinstance(fn.value, ast.Name)
            and (fn.value.id, fn.attr) in SYNC_CALLS
        ):
            yield node.lineno, f"{fn.value.id}.{fn.attr}"
        elif isinstance(fn, ast.Name) and fn.id in imported:
            yield node.lineno, fn.id


def test_only_durable_calls_fsync() -> None:
    found = [
        f"{path.relative_to(AGENT.parent)}:{line}: {name}"
        for path in sorted(AGENT.rglob("*.py"))
        if path.name != "durable.py" or path.parent != AGENT
        for line, name in sync_calls(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert found == [], "fsync outside agent/durable.py: call agent.durable instead"
    assert list(sync_calls(ast.parse((AGENT / "durable.py").read_text(encoding="utf-8"))))


def test_the_rule_sees_a_call() -> None:
    """The walk above can fail: each spelling of an fsync is found."""
    source = "import os, posix\nfrom os import fsync as f\nos.fsync(1)\nposix.fdatasync(1)\nf(1)\n"
    assert [name for _, name in sync_calls(ast.parse(source))] == ["os.fsync", "posix.fdatasync", "f"]


def test_write_replaces_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    durable.write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f"]


def test_mode_is_applied_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o777)
    try:
        durable.write(str(tmp_path / "a"), b"x", mode=0o644)
        durable.write(str(tmp_path / "b"), b"x", mode=0o640, exclusive=True)
        writer = durable.Writer(str(tmp_path / "c"), mode=0o604)
        writer.commit(str(tmp_path / "d"))
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("a", "b", "d")}
    assert modes == {"a": 0o644, "b": 0o640, "d": 0o604}


def test_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"live key")
    with pytest.raises(FileExistsError):
        durable.write(str(target), b"other", exclusive=True)
    assert target.read_bytes() == b"live key"
    durable.write(str(tmp_path / "new"), b"fresh", exclusive=True)
    assert (tmp_path / "new").read_bytes() == b"fresh"


def test_a_symlinked_temp_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, tmp_path / "t")
    with pytest.raises(FileExistsError):
        durable.Writer(str(tmp_path / "t"))
    os.symlink(victim, tmp_path / "out.tmp")  # a planted default temp: removed, not written through
    durable.write(str(tmp_path / "out"), b"data")
    assert victim.read_bytes() == b"keep"
    assert (tmp_path / "out").read_bytes() == b"data" and not (tmp_path / "out").is_symlink()
    assert not os.path.lexists(tmp_path / "out.tmp")


def test_exclusive_does_not_follow_a_symlinked_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, tmp_path / "key")
    with pytest.raises(FileExistsError):
        durable.write(str(tmp_path / "key"), b"x", exclusive=True)
    assert victim.read_bytes() == b"keep"


def test_errors_remove_the_temp_and_keep_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):  # fails after the temp is created: while writing
        durable.write(str(target), "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]
    with pytest.raises(TypeError):
        durable.write(str(tmp_path / "g"), "not bytes", exclusive=True)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == ["f"]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_bytes(b"")
    with pytest.raises(OSError):  # the rename over a non-empty directory fails: the temp goes
        durable.write(str(tmp_path / "dir"), b"data", tmp=str(tmp_path / "t"))
    assert sorted(os.listdir(tmp_path)) == ["dir", "f"]
    writer = durable.Writer(str(tmp_path / "w"))
    os.close(writer.fd)  # the disk "fails" under the writer: EBADF
    with pytest.raises(OSError):
        writer.write(b"data")
    assert sorted(os.listdir(tmp_path)) == ["dir", "f"]


def test_writer_streams_commits_and_aborts(tmp_path: Path) -> None:
    writer = durable.Writer(str(tmp_path / ".t1"), mode=0o644)
    for piece in (b"a" * 70_000, memoryview(b"b" * 10), b"c"):
        writer.write(piece)
    st = writer.commit(str(tmp_path / "m1"))
    assert st.st_size == 70_011 and os.stat(tmp_path / "m1").st_ino == st.st_ino
    assert sorted(os.listdir(tmp_path)) == ["m1"]
    writer = durable.Writer(str(tmp_path / ".t2"))
    writer.write(b"half")
    writer.abort()
    assert sorted(os.listdir(tmp_path)) == ["m1"]
    writer = durable.Writer(str(tmp_path / ".t3"))
    writer.write(b"x")
    with pytest.raises(FileNotFoundError):
        writer.commit(str(tmp_path / "missing-dir" / "m3"))
    assert sorted(os.listdir(tmp_path)) == ["m1"]


def test_fsync_dir_needs_a_directory_it_may_open(tmp_path: Path) -> None:
    durable.fsync_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        durable.fsync_dir(str(tmp_path / "gone"))
    durable.fsync_dir(str(tmp_path / "gone"), or_sync=True)  # sync(2) instead: no error


def test_append_adds_and_creates(tmp_path: Path) -> None:
    path = str(tmp_path / "manifest")
    durable.append(path, b"one\n", mode=0o640)
    durable.append(path, b"two\n")
    assert Path(path).read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_unsynced_write_is_still_atomic(tmp_path: Path) -> None:
    """sync=False (status.json) skips the flush, not the temp and rename."""
    target = tmp_path / "status.json"
    (tmp_path / "status.json.tmp").write_bytes(b"left by a crash")
    durable.write(str(target), b"{}", sync=False)
    assert target.read_bytes() == b"{}" and os.listdir(tmp_path) == ["status.json"]
