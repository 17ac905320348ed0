"""The relay password: where it may come from, in a fixed order, and never into a log line.

Each relay account has its own, looked up in this order: the systemd credential
$CREDENTIALS_DIRECTORY/relay-password (relay-password-<name> for an [[account]]), the account's
password_file, $RELAY_AGENT_PASSWORD ($RELAY_AGENT_PASSWORD_<NAME>, upper-cased, "-" as "_"), the
system keyring (service "relay-agent", user = the account's username).
An empty value counts as unset, so `SetCredential=relay-password:` can stand in for a missing
`LoadCredential=` file. `keyring` is imported only when it is actually consulted: it is slow.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from agent.config import Account
from agent.config.accounts import DEFAULT
from agent.errors import ConfigError, TempError

SERVICE = "relay-agent"
CREDENTIAL_NAME = "relay-password"
ENV_VAR = "RELAY_AGENT_PASSWORD"
NO_BACKEND = (
    "no keyring backend on this host; use systemd credentials "
    "(LoadCredential=relay-password:...) or relay.password_file"
)

__all__ = ["check_password_file", "find_password", "get_password", "keyring_status", "set_password"]


def _strip_newline(text: str) -> str:
    """Files written by `echo` end in one newline that is not part of the password."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from None
    try:
        return _strip_newline(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not valid UTF-8") from None


def credential_name(account: Account) -> str:
    return CREDENTIAL_NAME if account.name == DEFAULT else f"{CREDENTIAL_NAME}-{account.name}"


def env_var(account: Account) -> str:
    return ENV_VAR if account.name == DEFAULT else f"{ENV_VAR}_{account.name.upper().replace('-', '_')}"


def _from_credentials_dir(account: Account) -> str | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = os.path.join(directory, credential_name(account))
    if not os.path.exists(path):
        return None
    return _read_text(path, "systemd credential")


def check_private(path: str, st: os.stat_result, owners: tuple[int, ...] = ()) -> None:
    """Refuse a password file others can read or change, as ssh refuses a loose private key."""
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"password_file {path} is not a regular file")
    if mode & 0o077:
        how = "readable" if mode & 0o044 else "writable"
        raise ConfigError(
            f"password_file {path} is {how} by group/others (mode {mode:04o}); chmod 600 {path}"
        )
    if st.st_uid not in (0, os.geteuid(), *owners):
        raise ConfigError(
            f"password_file {path} is owned by uid {st.st_uid}, not by root or this user (uid {os.geteuid()})"
        )


def _read_password_file(path: str, owners: tuple[int, ...] = ()) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"password_file {path}: cannot open: {exc.strerror}") from None
    try:
        # fstat the open file, not the path: no window to swap the file after the check.
        check_private(path, os.fstat(fd), owners)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"password_file {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return _strip_newline(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"password_file {path}: not valid UTF-8") from None


def _from_password_file(account: Account) -> str | None:
    path = account.relay.password_file
    return _read_password_file(path) if path else None


def check_password_file(account: Account, owners: tuple[int, ...] = ()) -> None:
    """`config check`: read the account's password_file as the daemon will, ConfigError if it cannot.

    `owners`: uids besides root and ourselves whose file is accepted (the service user's).
    """
    if account.relay.password_file:
        _read_password_file(account.relay.password_file, owners)


def _backend() -> Any | None:
    """The keyring backend, or None when there is no usable one on this host."""
    import keyring
    import keyring.backends.fail
    import keyring.backends.null

    backend = keyring.get_keyring()
    if isinstance(backend, keyring.backends.fail.Keyring | keyring.backends.null.Keyring):
        return None
    return backend


def _backend_name(backend: Any) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def keyring_status() -> str:
    """One line for humans: which keyring backend would be used, or what to do without one."""
    backend = _backend()
    return NO_BACKEND if backend is None else f"keyring backend {_backend_name(backend)}"


def _from_keyring(account: Account) -> str | None:
    if not account.relay.username:
        return None
    backend = _backend()
    if backend is None:
        return None
    from keyring.errors import KeyringError

    try:
        value = backend.get_password(SERVICE, account.relay.username)
    except KeyringError as exc:
        raise TempError(f"keyring ({_backend_name(backend)}) failed: {exc}") from None
    return value if isinstance(value, str) else None


def find_password(account: Account) -> tuple[str, str] | None:
    """(password, where it came from) or None. The source is safe to print; the password is not."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
    var, user = env_var(account), account.relay.username
    sources: tuple[tuple[Callable[[], str | None], str], ...] = (
        (
            lambda: _from_credentials_dir(account),
            f"systemd credential {os.path.join(directory, credential_name(account))}",
        ),
        (lambda: _from_password_file(account), f"password_file {account.relay.password_file}"),
        (lambda: os.environ.get(var), f"${var}"),
        (lambda: _from_keyring(account), f"keyring (service {SERVICE}, user {user})"),
    )
    for lookup, origin in sources:
        value = lookup()
        if value:
            return value, origin
    return None


def get_password(account: Account) -> str | None:
    found = find_password(account)
    return found[0] if found else None


def set_password(account: Account, password: str) -> str:
    """Store the password in the keyring; returns the backend's name for the confirmation line."""
    if not account.relay.username:
        raise ConfigError("relay.username is not set; the keyring entry is stored under it")
    if not password:
        raise ConfigError("refusing to store an empty password")
    backend = _backend()
    if backend is None:
        raise ConfigError(NO_BACKEND)
    from keyring.errors import KeyringError

    try:
        backend.set_password(SERVICE, account.relay.username, password)
    except KeyringError as exc:
        raise TempError(f"keyring ({_backend_name(backend)}) failed: {exc}") from None
    return _backend_name(backend)
