"""`relay-agent credentials set|check`: store the relay password, prove the account works.

Neither command ever prints the password; `check` names the step that failed and why.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import Annotated

import typer

from agent.config import RelayConfig
from agent.errors import EX_TEMPFAIL, AgentError, ConfigError, UsageError

app = typer.Typer(help="Store and check the relay credentials.", no_args_is_help=True)

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="config file (TOML)")]


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


@app.command("set")
def set_cmd(config: ConfigOpt = None) -> None:
    """Store the relay password in the system keyring (prompted, or one line on stdin)."""
    from agent import config as config_mod
    from agent.relay import credentials

    try:
        cfg = config_mod.load(config)
        if not cfg.relay.username:
            raise ConfigError("relay.username is not set; the keyring entry is stored under it")
        backend = credentials.set_password(cfg.default_account, _read_password(cfg.relay.username))
    except AgentError as exc:
        raise _fail(exc) from None
    typer.echo(f"stored the relay password for {cfg.relay.username} (service relay-agent, {backend})")


def _step(name: str, detail: str = "") -> None:
    typer.echo(f"{name} ... ok" + (f" ({detail})" if detail else ""))


async def _check(relay: RelayConfig, password: str, helo: str) -> None:
    from agent.relay.connection import RelayConnection

    conn = RelayConnection(relay, password, helo)
    try:
        await conn.connect(progress=lambda step, detail: _step(step, detail if step != "auth" else ""))
        await conn.quit()
        _step("quit")
    finally:
        await conn.close()


@app.command()
def check(config: ConfigOpt = None) -> None:
    """Connect, STARTTLS (certificate and host name verified), AUTH, QUIT; report each step."""
    from agent import config as config_mod
    from agent.relay import credentials
    from agent.relay.connection import RelayError

    try:
        cfg = config_mod.load(config)
        if not cfg.relay.username:
            raise ConfigError("relay.username is not set")
        found = credentials.find_password(cfg.default_account)
        if found is None:
            raise ConfigError(f"no relay password found ({credentials.keyring_status()})")
    except AgentError as exc:
        raise _fail(exc) from None
    password, origin = found
    typer.echo(f"relay {cfg.relay.host}:{cfg.relay.port} ({cfg.relay.tls}), user {cfg.relay.username}")
    typer.echo(f"password from {origin}")
    try:
        asyncio.run(_check(cfg.relay, password, cfg.helo_name))
    except RelayError as exc:
        typer.echo(f"{exc.stage} ... FAILED: {exc.reply}")
        typer.echo(f"relay-agent: credentials check failed at {exc.stage}: {exc.reply}", err=True)
        raise typer.Exit(EX_TEMPFAIL) from None
    except AgentError as exc:
        raise _fail(exc) from None
    typer.echo("credentials ok")


if __name__ == "__main__":
    app()
