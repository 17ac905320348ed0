"""`relay-agent dkim keygen|record`: the typer front of agent.dkim.key_files."""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer

from agent.errors import AgentError, ConfigError, UsageError

app = typer.Typer(help="Create DKIM keys and print their DNS records.", no_args_is_help=True)

ConfigOpt = Annotated[str | None, typer.Option("--config", help="Config file")]
DomainOpt = Annotated[str, typer.Option("--domain", help="Signing domain (d=)")]
SelectorOpt = Annotated[str, typer.Option("--selector", help="Selector (s=)")]
# A DNS label sequence: also keeps "/" and ".." out of the key file name we build from it.
_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?:\.(?!-)[A-Za-z0-9_-]{1,63})*\.?$")


def _fail(exc: AgentError) -> typer.Exit:
    typer.echo(f"relay-agent: {exc.message}", err=True)
    return typer.Exit(exc.exit_code)


def _check_names(domain: str, selector: str) -> tuple[str, str]:
    if not _NAME.match(domain) or "." not in domain.strip("."):
        raise UsageError(f"--domain {domain!r}: expected a domain name such as example.com")
    if not _NAME.match(selector):
        raise UsageError(f"--selector {selector!r}: expected DNS labels such as relay2026")
    return domain.lower().rstrip("."), selector


@app.command()
def keygen(
    domain: DomainOpt,
    selector: SelectorOpt,
    algorithm: Annotated[str, typer.Option("--algorithm", help="rsa or ed25519")] = "rsa",
    bits: Annotated[int, typer.Option("--bits", help="RSA key size")] = 2048,
    out: Annotated[str, typer.Option("--out", help="Directory for the key file")] = ".",
    config_path: ConfigOpt = None,
) -> None:
    """Write a new private key (mode 0600, never over an existing file) and print its DNS record."""
    from agent.dkim import key_files

    try:
        domain, selector = _check_names(domain, selector)
        if algorithm not in ("rsa", "ed25519"):
            raise UsageError(f"--algorithm {algorithm!r}: expected rsa or ed25519")
        path = os.path.abspath(os.path.join(out, f"{domain}.{selector}.pem"))
        key = key_files.generate(algorithm, bits)
        key_files.write_private_key(key, path)
    except AgentError as exc:
        raise _fail(exc) from None
    size = f" {bits}" if algorithm == "rsa" else ""
    typer.echo(f"wrote {path} ({algorithm}{size}, mode 0600)")
    typer.echo("publish this DNS record:")
    typer.echo(key_files.zone_record(domain, selector, key_files.txt_value(key)))
    typer.echo("and add to the config:")
    typer.echo(f'[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nkey_file = "{path}"')


@app.command()
def record(domain: DomainOpt, selector: SelectorOpt, config_path: ConfigOpt = None) -> None:
    """Print the DNS TXT record for a key in the config."""
    from agent import config
    from agent.dkim import key_files

    try:
        cfg = config.load(config_path)
        want = domain.lower().rstrip(".")
        entry = next((k for k in cfg.dkim if k.domain == want and k.selector == selector), None)
        if entry is None:
            where = cfg.path or "the config (no config file found)"
            raise ConfigError(f"no [[dkim]] key for {selector}._domainkey.{want} in {where}")
        key = key_files.load_private_key(entry.key_file)
    except AgentError as exc:
        raise _fail(exc) from None
    typer.echo(key_files.zone_record(entry.domain, entry.selector, key_files.txt_value(key)))
