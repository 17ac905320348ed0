"""`relay-agent dns check`: the typer front of agent.dns.domain_check."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.errors import AgentError

app = typer.Typer(help="Check the DNS records a sender domain needs.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Check the DNS records a sender domain needs."""
    # A callback keeps `check` a subcommand even though it is the only one.


@app.command()
def check(
    domains: Annotated[
        list[str] | None, typer.Argument(help="Domains to check (default: configured)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array")] = False,
    nameserver: Annotated[
        str, typer.Option("--nameserver", help="IP[:PORT]; overrides the config's dns.nameserver")
    ] = "",
    config_path: Annotated[str | None, typer.Option("--config", "-c", help="config file (TOML)")] = None,
) -> None:
    """Check token, SPF, DKIM and DMARC for each sender domain; exit 1 on a FAIL, 2 if DNS fails."""
    from agent import config
    from agent.dns import domain_check

    try:
        cfg = config.load(config_path)
        results = domain_check.run_checks(cfg, domains or None, nameserver or None)
    except AgentError as exc:
        typer.echo(f"relay-agent: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(domain_check.format_json(results) if json_out else domain_check.format_text(results))
    raise typer.Exit(domain_check.exit_status(results))
