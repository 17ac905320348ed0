"""`mailq` / `sendmail -bp`: the queue in Postfix's mailq format."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from agent import config
    from agent.errors import AgentError
    from agent.queue.store import Queue
    from agent.queue.view import mailq

    argv = sys.argv[1:] if argv is None else argv
    cli_path = None
    for flag in ("-C", "--config"):
        if flag in argv[:-1]:
            cli_path = argv[argv.index(flag) + 1]
    try:
        cfg = config.load(cli_path)
        text = mailq(Queue(cfg.queue.path), cfg.queue.maildrop)
    except AgentError as exc:
        print(f"mailq: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except PermissionError as exc:
        print(f"mailq: cannot read the queue: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 77
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
