"""The pre-digested runtime config of the sendmail fast path.

Parsing TOML costs more in imports alone than sendmail's whole budget, so
the few values sendmail needs are kept as a marshal'ed plain dict next to the
config file (`<dir>/.<basename>.digest`), tied to the TOML's inode, mtime_ns and
size. A stale, missing or untrustworthy digest is simply ignored (None): the
caller then parses the TOML and tries to write a fresh one.
"""

import marshal
import posix  # not os on the fast path (load); build/write run on the slow path

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is dear on the fast path
if TYPE_CHECKING:
    from os import stat_result

    from agent.config import Config

VERSION = 1
MAX_SIZE = 1 << 20


def path_for(config_path: str) -> str:
    head, _, base = config_path.rpartition("/")
    return f"{head}/.{base}.digest" if head or config_path.startswith("/") else f".{base}.digest"


def build(cfg: "Config", st: "stat_result | None" = None) -> dict[str, object]:
    """The digest of `cfg`; `st` is the config file's stat taken before it was read."""
    if st is None and cfg.path:
        st = posix.stat(cfg.path)
    return {
        "version": VERSION,
        "maildrop": cfg.queue.maildrop,
        "min_free": cfg.queue.min_free,
        "max_message_size": cfg.limits.max_message_size,
        "socket": cfg.listen.socket,
        "default_from": cfg.sender.default_from,
        "rewrite_local": cfg.sender.rewrite_local,
        "aliases": dict(cfg.aliases),
        "dkim_domains": sorted({k.domain for k in cfg.dkim}),
        "unsigned": cfg.policy.unsigned,
        "hostname": cfg.hostname,
        "st_ino": st.st_ino if st else 0,
        "st_mtime_ns": st.st_mtime_ns if st else 0,
        "st_size": st.st_size if st else 0,
    }


def write(cfg: "Config", st: "stat_result | None" = None) -> bool:
    """Atomically store the digest beside cfg.path (mode 0644); False if that is not possible.

    Never an error: a missing digest only makes sendmail slower.
    """
    from agent import durable

    if not cfg.path:
        return False
    target = path_for(cfg.path)
    try:
        data = marshal.dumps(build(cfg, st))
        # 0644 whatever the umask: sendmail runs as any user. A name of its own: sendmail runs
        # concurrently. No fsync: a cache, whose loss only slows sendmail (load ignores a torn one)
        tmp = f"{target}.{posix.getpid()}.{posix.urandom(4).hex()}.tmp"
        durable.write(target, data, mode=0o644, tmp=tmp, sync=False)
    except (OSError, ValueError):
        return False
    return True


def load(config_path: str) -> dict[str, object] | None:
    """The digest for config_path if it is fresh and trustworthy, else None."""
    try:
        cst = posix.stat(config_path)
        fd = posix.open(path_for(config_path), posix.O_RDONLY | posix.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = posix.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000 or st.st_size > MAX_SIZE:
            return None
        if st.st_uid not in (0, cst.st_uid) or st.st_mode & 0o022:
            return None  # someone else could have planted it
        data = posix.read(fd, MAX_SIZE + 1)
    except OSError:
        return None
    finally:
        posix.close(fd)
    try:
        digest = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return None
    if not isinstance(digest, dict) or digest.get("version") != VERSION:
        return None
    fresh = (digest.get("st_ino"), digest.get("st_mtime_ns"), digest.get("st_size")) == (
        cst.st_ino,
        cst.st_mtime_ns,
        cst.st_size,
    )
    return digest if fresh and _well_typed(digest) else None


_TYPES: dict[str, type] = {
    "maildrop": str,
    "min_free": int,
    "max_message_size": int,
    "socket": str,
    "default_from": str,
    "rewrite_local": bool,
    "aliases": dict,
    "dkim_domains": list,
    "unsigned": str,
    "hostname": str,
}


def _well_typed(digest: dict[object, object]) -> bool:
    return all(isinstance(digest.get(k), t) for k, t in _TYPES.items())
