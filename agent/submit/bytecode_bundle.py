"""sendmail's fast path as one file of bytecode, run by the stub without importlib.

Importing a module through importlib has a fixed cost even for an empty one (finders,
specs, locks, directory listings, a stat and four syscalls per file); for the package and
the dozen modules sendmail needs it was half of sendmail's own work. So
their code objects are kept together in `__pycache__/sendmail.<cache tag>.bundle`,
each beside the mtime_ns and size of the .py it was compiled from, together with the
code of `preload`, which the stub runs before anything else (see agent.submit.stub). The stub
itself stays a few lines: a script is compiled on every run.

A bundle is used only when the file could only have been written by root or by us (the
stub checks that before unmarshalling anything), the interpreter's magic number matches,
and every source is unchanged. Otherwise nothing
of it runs, the modules import the normal way, and after the message is handed over
the stub calls `refresh`, which writes a fresh bundle when this user may (root, as
importlib writes .pyc files) and silently does nothing when not.
"""

import marshal
import posix
import sys

from agent import durable

# each package before its modules, each module after the agent modules it imports
SENDMAIL = (
    "agent",
    "agent.errors",
    "agent.mail",
    "agent.mail.addressing",
    "agent.submit",
    "agent.submit.config_cache",
    "agent.mail.headers",
    "agent.config_path",
    "agent.dkim",
    "agent.dkim.policy",
    "agent.submit.args",
    "agent.queue",
    "agent.queue.trigger",
    "agent.mail.smtp_text",
    "agent.queue.queue_file",
    "agent.submit.submission",
    "agent.submit.sendmail",
    "agent.durable",
    "agent.queue.maildrop_write",
)
MAX_SIZE = 1 << 22  # a source, and the whole bundle the stub reads


def bundle_path(package_dir: str) -> str:
    return f"{package_dir}/__pycache__/sendmail.{sys.implementation.cache_tag}.bundle"


def source_path(package_dir: str, name: str) -> str:
    """`package_dir` is agent's directory; a (sub)package's source is its __init__.py."""
    path = "/".join([package_dir, *name.split(".")[1:]])
    return f"{path}/__init__.py" if _is_dir(path) else f"{path}.py"


def preload(entries):  # type: ignore[no-untyped-def]  # the stub calls it untyped
    """Run the bundle's modules if every source is as it was compiled; whether they ran.

    The stub has already checked the file's owner, mode and magic number; this function's
    own code travels in the bundle (see build) so the stub stays a few lines to compile.
    """
    code_type = type((lambda: 0).__code__)
    try:
        for _name, source, mtime_ns, size, code in entries:
            st = posix.stat(source)
            if st.st_mtime_ns != mtime_ns or st.st_size != size or type(code) is not code_type:
                return False
    except (OSError, ValueError, TypeError):
        return False
    added = []
    try:
        for name, source, _mtime_ns, _size, code in entries:
            package, _, base = name.rpartition(".")
            module = type(sys)(name)
            module.__file__ = source
            module.__package__ = package or name
            if source.endswith("/__init__.py"):  # a package: its other modules are found here
                module.__path__ = [source.rpartition("/")[0]]
            sys.modules[name] = module
            added.append(name)
            exec(code, module.__dict__)
            if package:
                setattr(sys.modules[package], base, module)
    except BaseException:
        for name in added:  # importlib then starts afresh, as if the bundle was not there
            del sys.modules[name]
        raise
    return True


def build(package_dir: str) -> bytes:
    """A bundle of the fast path's modules as they are in `package_dir` now."""
    entries = []
    for name in SENDMAIL:
        source = source_path(package_dir, name)
        fd = posix.open(source, posix.O_RDONLY)
        try:
            st = posix.fstat(fd)  # of what is read, even if the file is replaced meanwhile
            text = posix.read(fd, MAX_SIZE)
        finally:
            posix.close(fd)
        # optimize=2: no docstrings, less to read and unmarshal on every run; these
        # modules use neither `assert` nor __doc__ (tests/test_fastload.py checks)
        code = compile(text, source, "exec", dont_inherit=True, optimize=2)
        entries.append((name, source, st.st_mtime_ns, st.st_size, code))
    magic: bytes = sys.modules["_frozen_importlib_external"].MAGIC_NUMBER
    return magic + marshal.dumps((preload.__code__, tuple(entries)))


def refresh(package_dir: str) -> bool:
    """Write a fresh bundle if this user may; never raises (it is only a cache)."""
    path = bundle_path(package_dir)
    directory = path.rpartition("/")[0]
    have_dir = _exists(directory)
    if not posix.access(directory if have_dir else package_dir, posix.W_OK):
        return False
    try:
        data = build(package_dir)
        if not have_dir:
            posix.mkdir(directory, 0o755)
        # 0644 whatever the umask: other users' sendmail reads it; fsynced, as a torn bundle
        # after a crash would fail to load, not mislead; its directory is not: a lost bundle
        # is only written again
        durable.write(path, data, mode=0o644, tmp=f"{path}.{posix.getpid()}.tmp", sync_dir=False)
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def _is_dir(path: str) -> bool:
    try:
        return posix.stat(path).st_mode & 0o170000 == 0o040000
    except OSError:
        return False


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except OSError:
        return False
    return True
