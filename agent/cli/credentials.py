"""`relay-agent credentials set|check [--account NAME]`: store a relay password, prove accounts work.

`set` stores the password of one account (the default one without --account) in the keyring, under
that account's username. `check` proves one account (--account), or every account, one block each.
Neither command ever prints a password; `check` names the step that failed and why.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import Annotated

import typer

from agent.config import Account, Config
from agent.config.accounts import DEFAULT
from agent.errors import EX_TEMPFAIL, AgentError, ConfigError, UsageError

app = typer.Typer(help="Store and check the relay credentials.", no_args_is_help=True)

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="config file (TOML)")]
AccountOpt = Annotated[
    str | None, typer.Option("--account", "-a", help='the [[account]] name ("default": [relay])')
]


def _fail(exc: AgentError) -> typer.Exit:
    typer.echo(f"relay-agent: {exc.message}", err=True)
    return typer.Exit(exc.exit_code)


def _read_password(username: str) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass(f"relay password for {username}: ")
    else:
        password = sys.stdin.readline()
        password = password[:-1] if password.endswith("\n") else password
        password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise UsageError("no password given")
    return password


def _account(cfg: Config, name: str | None) -> Account:
    """The account --account names (the default one without it); UsageError for an unknown name."""
    account = cfg.account(name or DEFAULT)
    if account is None:
        known = ", ".join(a.name for a in cfg.accounts)
        raise UsageError(f"--account {name}: no such account in the config (accounts: {known})")
    return account


def _username(account: Account) -> str:
    if not account.relay.username:
        raise ConfigError("relay.username is not set; the keyring entry is stored under it")
    return account.relay.username


@app.command("set")
def set_cmd(config: ConfigOpt = None, account: AccountOpt = None) -> None:
    """Store an account's relay password in the system keyring (prompted, or one line on stdin)."""
    from agent import config as config_mod
    from agent.relay import credentials

    try:
        chosen = _account(config_mod.load(config), account)
        user = _username(chosen)
        backend = credentials.set_password(chosen, _read_password(user))
    except AgentError as exc:
        raise _fail(exc) from None
    which = "" if chosen.name == DEFAULT else f"account {chosen.name}, "
    typer.echo(f"stored the relay password for {user} ({which}service relay-agent, {backend})")


def _step(name: str, detail: str = "") -> None:
    typer.echo(f"{name} ... ok" + (f" ({detail})" if detail else ""))


async def _handshake(account: Account, password: str, helo: str) -> None:
    from agent.relay.connection import RelayConnection

    conn = RelayConnection(account.relay, password, helo)
    try:
        await conn.connect(progress=lambda step, detail: _step(step, detail if step != "auth" else ""))
        await conn.quit()
        _step("quit")
    finally:
        await conn.close()


def _check_one(cfg: Config, account: Account, named: bool) -> int:
    """One account's block; its exit status. `named`: errors name the account (several blocks)."""
    from agent.relay import credentials
    from agent.relay.connection import RelayError

    who = f"account {account.name}: " if named else ""
    try:
        if not account.relay.username:
            raise ConfigError("relay.username is not set")
        found = credentials.find_password(account)
        if found is None:
            raise ConfigError(f"no relay password found ({credentials.keyring_status()})")
    except AgentError as exc:
        typer.echo(f"relay-agent: {who}{exc.message}", err=True)
        return exc.exit_code
    password, origin = found
    r = account.relay
    typer.echo(f"relay {r.host}:{r.port} ({r.tls}), user {r.username}")
    typer.echo(f"password from {origin}")
    try:
        asyncio.run(_handshake(account, password, cfg.helo_name))
    except RelayError as exc:
        typer.echo(f"{exc.stage} ... FAILED: {exc.reply}")
        typer.echo(f"relay-agent: {who}credentials check failed at {exc.stage}: {exc.reply}", err=True)
        return EX_TEMPFAIL
    except AgentError as exc:
        typer.echo(f"relay-agent: {who}{exc.message}", err=True)
        return exc.exit_code
    typer.echo("credentials ok")
    return 0


@app.command()
def check(config: ConfigOpt = None, account: AccountOpt = None) -> None:
    """Connect, STARTTLS (certificate and host name verified), AUTH, QUIT; report each step.

    Without --account every account is checked, one block each; the exit status is the first
    failing block's (0 when every account works)."""
    from agent import config as config_mod

    try:
        cfg = config_mod.load(config)
        chosen = [_account(cfg, account)] if account else list(cfg.accounts)
    except AgentError as exc:
        raise _fail(exc) from None
    if cfg.capture:
        typer.echo("mode: capture (the daemon never connects to a relay; this check does)")
    several = len(chosen) > 1
    status = 0
    for i, acc in enumerate(chosen):
        if several:
            typer.echo(("\n" if i else "") + f"account {acc.name}")
        rc = _check_one(cfg, acc, several)
        status = status or rc
    raise typer.Exit(status)


if __name__ == "__main__":
    app()
