"""`relay-agent`: the typer app. Commands stay thin; the work lives in modules."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated, Any, NoReturn

import typer

from agent import config as config_mod
from agent.cli import credentials, dkim, dns, install
from agent.config_path import ENV_VAR
from agent.errors import AgentError, ConfigError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # never print a local that might hold a secret
    help="Durable outbound mail agent.",
)
queue_app = typer.Typer(no_args_is_help=True, help="Inspect and manage the mail queue.")
config_app = typer.Typer(no_args_is_help=True, help="Validate and show the config.")
app.add_typer(queue_app, name="queue")
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="config file (TOML)")]


def fail(exc: AgentError) -> NoReturn:
    typer.echo(f"relay-agent: {exc.message}", err=True)
    raise typer.Exit(exc.exit_code)


def use_config(path: str | None) -> None:
    """--config before or after the subcommand: both end up in the environment."""
    if path:
        if not os.path.isfile(path):
            fail(ConfigError(f"config file {path} (from --config) does not exist"))
        os.environ[ENV_VAR] = os.path.abspath(path)


def load(path: str | None = None) -> config_mod.Config:
    use_config(path)
    try:
        return config_mod.load()
    except AgentError as exc:
        fail(exc)


@app.callback()
def main_callback(config: ConfigOpt = None) -> None:
    use_config(config)


@app.command()
def run(config: ConfigOpt = None) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    use_config(config)
    from agent import daemon

    raise typer.Exit(daemon.main(None))


@config_app.command("check")
def config_check(
    config: ConfigOpt = None, quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False
) -> None:
    """Validate the config and open the files it names (DKIM keys, CA, password file) as the daemon
    would; print it, secrets redacted; refresh sendmail's digest."""
    from agent.cli.config_files import check_files
    from agent.submit import config_cache

    cfg = load(config)
    try:
        check_files(cfg)
    except AgentError as exc:
        fail(exc)
    config_cache.write(cfg)  # best effort by design: returns False where it cannot write
    if not quiet:
        if cfg.capture:  # said first: nothing is relayed from this host (the JSON names capture_dir)
            typer.echo("mode: capture")
        typer.echo(json.dumps(config_mod.redacted(cfg), indent=2))


def _queue(cfg: config_mod.Config) -> Any:
    from agent.queue.store import Queue

    return Queue(cfg.queue.path, cfg.queue.min_free)


def _items(cfg: config_mod.Config) -> list[dict[str, Any]]:
    from agent.queue.view import collect

    try:
        return collect(_queue(cfg), cfg.queue.maildrop)
    except PermissionError as exc:
        fail(AgentError(f"cannot read the queue: {exc.strerror}: {exc.filename}"))


@queue_app.command("list")
def queue_list(config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List queued, deferred and failed mail (mailq)."""
    cfg = load(config)
    if as_json:
        typer.echo(json.dumps(_items(cfg), indent=2))
        return
    from agent.queue.view import mailq

    try:
        typer.echo(mailq(_queue(cfg), cfg.queue.maildrop).rstrip("\n"))
    except PermissionError as exc:
        fail(AgentError(f"cannot read the queue: {exc.strerror}: {exc.filename}"))


@queue_app.command("show")
def queue_show(qid: str, config: ConfigOpt = None) -> None:
    """Print one message: envelope, state and content."""
    cfg = load(config)
    q = _queue(cfg)
    try:
        env, message = q.read(qid.upper())
    except (FileNotFoundError, ValueError):
        fail(AgentError(f"no message {qid} in the queue"))
    from agent.queue.store import Entry
    from agent.queue.view import item

    data = item(Entry(qid.upper(), env, q.read_state(qid.upper()), len(message)))
    typer.echo(json.dumps(data, indent=2))
    typer.echo("")
    typer.echo(message.decode("utf-8", errors="replace").replace("\r\n", "\n"))


@queue_app.command("flush")
def queue_flush(config: ConfigOpt = None) -> None:
    """Retry all deferred mail now."""
    from agent.cli import control

    cfg = load(config)
    if control.flush(cfg.listen.socket):
        typer.echo("queue flush requested")
    else:
        fail(AgentError("the daemon is not running; the queue is tried when it starts"))


@queue_app.command("delete")
def queue_delete(
    qid: Annotated[str | None, typer.Argument()] = None,
    all_: Annotated[bool, typer.Option("--all")] = False,
    sender: Annotated[str | None, typer.Option("--sender")] = None,
    config: ConfigOpt = None,
) -> None:
    """Delete one message (ID), every message (--all) or a sender's (--sender ADDR).

    Safe with the daemon running: a message is its file in msg/, and the daemon skips one that is
    gone when its turn comes (one it is sending right now may still go out).
    """
    from agent.queue import bulk
    from agent.queue.ids import valid_id

    cfg = load(config)
    q = _queue(cfg)
    if bool(qid) + all_ + bool(sender) != 1:
        fail(AgentError("give exactly one of ID, --all or --sender ADDR"))
    deleted = 0
    try:
        if all_:
            deleted = bulk.remove_all(q)  # no file needs reading
        else:
            if qid:
                targets = [qid.upper()] if valid_id(qid.upper()) and q.exists(qid.upper()) else []
            else:
                who = (sender or "").lower()
                targets = [i for i, env, _, _ in bulk.scan(q) if env.sender.lower() == who]
            bulk.remove(q, targets)
            deleted = len(targets)
    except FileNotFoundError:
        pass  # no queue yet
    except PermissionError as exc:
        fail(AgentError(f"cannot change the queue: {exc.strerror}: {exc.filename}"))
    if qid and not deleted:
        fail(AgentError(f"no message {qid} in the queue"))
    typer.echo(f"deleted {deleted} message(s)")


@queue_app.command("hold")
def queue_hold(qid: str, config: ConfigOpt = None) -> None:
    """Keep a message in the queue without trying it (until `queue release`)."""
    from agent.cli import held

    cfg = load(config)
    try:
        done = held.hold_one(_queue(cfg), qid)
    except AgentError as exc:
        fail(exc)
    typer.echo(f"{qid.upper()}: {'held' if done else 'not held (held already, or failed)'}")


@queue_app.command("release")
def queue_release(
    qid: Annotated[str | None, typer.Argument()] = None,
    all_: Annotated[bool, typer.Option("--all")] = False,
    sender: Annotated[str | None, typer.Option("--sender")] = None,
    domain: Annotated[str | None, typer.Option("--domain")] = None,
    config: ConfigOpt = None,
) -> None:
    """Release held mail for delivery now: one message (ID), all (--all), a sender's (--sender ADDR)
    or a domain's (--domain D: its senders, and mail held for its DNS records)."""
    from agent.cli import held

    cfg = load(config)
    q = _queue(cfg)
    try:
        released = held.release(q, held.pick(qid, all_, sender, domain))
    except AgentError as exc:
        fail(exc)
    if qid and not released:
        if not q.exists(qid.upper()):
            fail(AgentError(f"no message {qid} in the queue"))
        typer.echo(f"{qid.upper()}: not held")
        return
    if released:
        held.tell_daemon(cfg)
    typer.echo(f"{qid.upper()}: released" if qid else f"released {len(released)} message(s)")


@app.command()
def status(config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Is the daemon running, what is queued, what has it done."""
    from agent.cli import control
    from agent.queue.view import counts, oldest_seconds
    from agent.status import accounts as relay_accounts
    from agent.status import snapshot

    cfg = load(config)
    running = control.running(cfg.listen.socket)
    items = _items(cfg)
    c = counts(items)
    saved = snapshot.read(cfg.queue.path)
    data = {
        "running": running,
        "queue": {k: c[k] for k in ("queued", "deferred", "held", "failed")}
        | {"oldest_seconds": oldest_seconds(items, time.time())},
        "counters": snapshot.counts(saved),
        "last_relay_error": saved.get("last_relay_error"),
        "relay_suspended": snapshot.suspended(saved),
        "accounts": relay_accounts.shown(cfg.accounts, saved),
        "domains": snapshot.domain_verdicts(saved),
    }
    if as_json:
        typer.echo(json.dumps(data))
        return
    if cfg.capture:  # said first: nothing is relayed from this host
        typer.echo(f"mode: capture\ncapture_dir: {cfg.relay.capture_dir} (a Maildir; nothing is relayed)")
    typer.echo(f"daemon: {'running' if running else 'not running'}")
    q, k = data["queue"], data["counters"]
    assert isinstance(q, dict) and isinstance(k, dict)
    typer.echo(
        f"queue: {q['queued']} queued, {q['deferred']} deferred, {q['held']} held, {q['failed']} failed"
        + (f"; the oldest waits {q['oldest_seconds']}s" if q["oldest_seconds"] else "")
    )
    typer.echo(f"since start: {k['sent']} sent, {k['deferred']} deferred, {k['bounced']} bounced")
    if data["last_relay_error"]:
        typer.echo(f"last relay error: {data['last_relay_error']}")
    if data["relay_suspended"]:
        typer.echo(f"{data['relay_suspended']}")
    if cfg.extra_accounts:  # with [relay] alone, the lines above say it all
        assert isinstance(data["accounts"], list)
        typer.echo("\n".join(relay_accounts.lines(data["accounts"])))
    for d in snapshot.domain_verdicts(saved):
        typer.echo(_domain_line(d))
    if isinstance(updated := saved.get("updated"), (int, float)) and updated:
        typer.echo(f"status updated {int(time.time() - updated)}s ago")


def _domain_line(d: dict[str, Any]) -> str:
    """One line of the sender-domain watch's last verdict for a domain."""
    checks = ", ".join(f"{c} {d.get(c, 'UNKNOWN')}" for c in ("token", "spf", "dkim", "dmarc"))
    holding = "; its mail is held" if d.get("holding") else ""
    who = f"domain {d.get('domain')} (account {d.get('account')})"
    return f"{who}: {checks}; checked {d.get('checked')}{holding}"


@app.command()
def demo(keep: Annotated[bool, typer.Option("--keep", help="keep the temp dir to look at")] = False) -> None:
    """Run the whole path locally: no account, no network."""
    from agent.demo import tour

    raise typer.Exit(tour.main(keep=keep))


app.add_typer(dkim.app, name="dkim")
app.add_typer(dns.app, name="dns")
app.add_typer(credentials.app, name="credentials")
app.registered_commands += install.app.registered_commands


def main() -> None:
    try:
        app()
    except AgentError as exc:
        print(f"relay-agent: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
