"""The `relay-agent` console script.

`relay-agent run` goes straight to the daemon: the long-running process does
not need typer and click in memory (the RSS budget is 60 MB with 100,000
messages queued). Everything else is the typer app in agent/cli/commands.py.
"""

from __future__ import annotations

import sys


def _run_args(argv: list[str]) -> str | bool | None:
    """The --config value if argv is exactly `[--config P] run [--config P]`, else False."""
    config: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.partition("=")[2]
        else:
            rest.append(arg)
        i += 1
    return config if rest == ["run"] else False


def main() -> None:
    config = _run_args(sys.argv[1:])
    if config is not False:
        import os

        from agent.config_path import ENV_VAR

        if isinstance(config, str):
            if not os.path.isfile(config):
                print(f"relay-agent: config file {config} (from --config) does not exist", file=sys.stderr)
                sys.exit(78)
            os.environ[ENV_VAR] = os.path.abspath(config)
        from agent.dkim import dns_deferred

        dns_deferred.defer()  # before agent.daemon imports dkim
        from agent import daemon

        sys.exit(daemon.main(None))
    from agent.cli import commands

    commands.main()
