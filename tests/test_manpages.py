"""The manual pages in man/ cannot drift from the code.

Every config key the parser accepts (read from the config dataclasses and the [[account]] and
[quotas] parsers), every `relay-agent` command and flag (read from the typer app's click tree),
every flag sendmail's parser knows (found by asking the parser) and mailq's, the exit codes, the
daemon's signals and the environment must appear in the page that documents them, in the place
that documents them; and groff, man (and mandoc, where installed) render the pages with no
warning. Each check is a function of the page's text, and is shown to fail on a copy of the page
with one thing taken out.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shutil
import string
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main

from agent import config_path, errors
from agent.cli import commands
from agent.config import accounts, quotas, sections
from agent.dns.query import DnsError
from agent.errors import AgentError, UsageError
from agent.relay import credentials
from agent.submit import args

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = sorted(p.name for p in MAN.glob("*.[1-9]"))  # every page is rendered and linted


# --- the page as data -------------------------------------------------------------------------


@dataclass
class Block:
    """A run of text under one .SH / .SS heading; `tag` is the .TP tag it belongs to, if any."""

    section: str
    sub: str
    tag: str
    text: str


_ESCAPES = re.compile(r"\\(f\[[^]]*\]|f\(..|f.|\(..|\[[^]]*\]|.)")
_NAMED = {"(dq": '"', "(aq": "'", "(bu": "*", "(em": "--", "(en": "-", "(ti": "~"}
_SIMPLE = {"-": "-", "e": "\\", " ": " ", "~": " ", "&": "", "%": "", "c": "", "|": "", "^": ""}


def _unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc.startswith("f"):
            return ""
        return _NAMED.get(esc, _SIMPLE.get(esc, esc))

    return _ESCAPES.sub(one, text)


def _macro_args(rest: str) -> list[str]:
    """roff's argument splitting: blanks separate, double quotes group, a doubled quote inside
    quotes stands for one."""
    out, i = [], 0
    while i < len(rest):
        if rest[i] == " ":
            i += 1
        elif rest[i] == '"':
            j, word = i + 1, ""
            while j < len(rest) and not (rest[j] == '"' and rest[j + 1 : j + 2] != '"'):
                word += rest[j]
                j += 2 if rest[j] == '"' else 1
            out.append(word)
            i = j + 1
        else:
            j = rest.find(" ", i)
            j = len(rest) if j < 0 else j
            out.append(rest[i:j])
            i = j
    return out


def _line_text(line: str) -> tuple[str, str]:
    """(macro name or "", the text the line shows)."""
    if not line.startswith((".", "'")):
        return "", _unescape(line)
    name, _, rest = line[1:].strip().partition(" ")
    parts = [_unescape(a) for a in _macro_args(rest)]
    if name in ("BR", "BI", "IB", "IR", "RB", "RI"):
        return name, "".join(parts)
    return name, " ".join(parts)


def blocks(source: str) -> list[Block]:
    out: list[Block] = []
    section = sub = tag = ""
    text: list[str] = []
    want_tag = False

    def flush() -> None:
        if tag or text:
            out.append(Block(section, sub, tag, " ".join(text)))
        text.clear()

    for line in source.splitlines():
        if line.startswith('.\\"'):
            continue
        name, shown = _line_text(line)
        if want_tag and (shown or not name):
            tag, want_tag = shown, False
        elif name in ("SH", "SS"):
            flush()
            section, sub, tag = (shown, "", "") if name == "SH" else (section, shown, "")
        elif name in ("TP", "PP", "LP", "P", "IP"):
            flush()
            tag, want_tag = "", name == "TP"
        elif shown:
            text.append(shown)
    flush()
    return out


def page(name: str) -> list[Block]:
    return blocks((MAN / name).read_text())


def words(text: str) -> set[str]:
    """Option-like and key-like tokens: `--json`, `-c`, `min_rate`, `"*"` as `*`."""
    return {w.strip("\"'") for w in re.split(r"[\s,;()\[\]|]+", text) if w.strip("\"'")}


def tags(bl: list[Block], section: str, sub: str | None = None) -> set[str]:
    return {w for b in bl if b.section == section and sub in (None, b.sub) for w in words(b.tag)}


def options_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


# --- what the code accepts --------------------------------------------------------------------

SECTION_FIELDS = {"relay", "queue", "listen", "limits", "sender", "metrics", "policy", "dns"}
NOT_KEYS = {"path", "hostname"}  # Config fields the loader fills in, not keys of the file


def config_keys() -> dict[str, set[str]]:
    """{page subsection: keys}: from the dataclasses and the account and quota parsers."""
    keys: dict[str, set[str]] = {}
    for f in dataclasses.fields(sections.Config):
        value = getattr(sections.Config(), f.name)
        if f.name in NOT_KEYS:
            continue
        if dataclasses.is_dataclass(value):
            keys[f"[{f.name}]"] = {g.name for g in dataclasses.fields(value)}
        elif f.name == "dkim":
            keys["[[dkim]]"] = {g.name for g in dataclasses.fields(sections.DkimKey)}
        elif f.name == "extra_accounts":
            relay = {g.name for g in dataclasses.fields(accounts.RelayConfig)}
            keys["[[account]]"] = set(accounts.ACCOUNT_ONLY) | relay - set(accounts.NOT_PER_ACCOUNT)
        elif f.name == "aliases":
            keys["[aliases]"] = {"default"}  # the catch-all name agent/mail/addressing.py looks up
        elif f.name == "quotas":
            keys["[quotas]"] = {"*", "smtp"}  # the two special submitters of agent/config/quotas.py
        else:
            raise AssertionError(f"Config.{f.name} is new: document it in man/ and teach this test")
    assert {k.strip("[]") for k in keys} >= SECTION_FIELDS
    return keys


def missing_keys(bl: list[Block]) -> list[str]:
    missing = []
    for sub, keys in config_keys().items():
        documented = tags(bl, "SECTIONS AND KEYS", sub)
        missing += [f"{sub} {k}" for k in sorted(keys - documented)]
    quota_text = " ".join(b.text for b in bl if b.sub == "[quotas]")
    missing += [f"[quotas] period {p}" for p in quotas.PERIODS if p not in words(quota_text)]
    return missing


def wrong_defaults(bl: list[Block]) -> list[str]:
    """Each key of a plain section says `Default: X.` with X, read as TOML, the code's default."""
    wrong = []
    for f in dataclasses.fields(sections.Config):
        value = getattr(sections.Config(), f.name)
        if not dataclasses.is_dataclass(value):
            continue
        for g in dataclasses.fields(value):
            body = " ".join(b.text for b in bl if b.sub == f"[{f.name}]" and b.tag == g.name)
            m = re.search(r'Default: ("[^"]*"|[^\s;,()]+?)(?=[.;,]?(\s|$))', body)
            said = tomllib.loads(f"v = {m.group(1)}")["v"] if m else None
            if said != g.default or isinstance(said, bool) != isinstance(g.default, bool):
                wrong.append(f"{f.name}.{g.name}: page says {m and m.group(1)}, code has {g.default!r}")
    return wrong


def cli_commands() -> dict[str, list[tuple[str, ...]]]:
    """{"queue delete": [("--all",), ("--sender",), ("--config", "-c")], ...}: each option's spellings;
    "" is the top level."""
    found: dict[str, list[tuple[str, ...]]] = {}

    def walk(cmd: Any, path: str) -> None:
        opts = [tuple(p.opts + p.secondary_opts) for p in cmd.params if p.param_type_name == "option"]
        subs = getattr(cmd, "commands", {})
        if opts or not subs:
            found[path] = opts
        for name, sub in subs.items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(commands.app), "")
    return found


def missing_cli(bl: list[Block]) -> list[str]:
    """Each option of each command in that command's block; a short and a long spelling of one
    option (-c, --config) may share a tag in OPTIONS, and the block show only one of them."""
    missing = []
    top = tags(bl, "OPTIONS")
    for path, opts in cli_commands().items():
        where = [b for b in bl if (b.section, b.sub) == (("OPTIONS", "") if not path else ("COMMANDS", path))]
        if not where:
            missing.append(f"relay-agent {path}: no section")
        shown = options_in(" ".join(f"{b.tag} {b.text}" for b in where))
        for spellings in opts:
            if not shown & set(spellings):
                missing.append(f"relay-agent {path} {spellings[0]}")
            missing += [f"relay-agent {path} {o}" for o in spellings if o not in shown | top]
    if "--help" not in tags(bl, "OPTIONS"):
        missing.append("relay-agent --help")
    return missing


def stale_cli(bl: list[Block]) -> list[str]:
    """Commands and long options the page documents that the code does not have."""
    known = cli_commands()
    stale = []
    for b in bl:
        if b.section != "COMMANDS" or not b.sub:
            continue
        if b.sub not in known:
            stale.append(f"relay-agent {b.sub}: no such command")
            continue
        for o in options_in(f"{b.tag} {b.text}"):
            known_here = {s for spellings in known[b.sub] for s in spellings}
            if o.startswith("--") and o not in known_here:
                stale.append(f"relay-agent {b.sub} {o}: no such option")
    return sorted(set(stale))


def sendmail_knows(flag: str) -> bool:
    """Does the parser take `flag` (followed by a value, as a flag that takes one needs)? A value it
    refuses (`-R bogus`) still shows that it knows the flag."""
    try:
        args.parse([flag, "value@example.com"])
    except UsageError as exc:
        return not exc.message.startswith(("unknown option", f"{flag}: mode not supported"))
    return True


def sendmail_flags() -> set[str]:
    """Every single-letter flag the parser knows, found by asking it; -b as its modes."""
    flags = {f"-{c}" for c in string.ascii_letters if sendmail_knows(f"-{c}")}
    flags |= {f"-b{m}" for m in args.MODES}
    return flags - {"-b"} | {"--"}


# --- the checks -------------------------------------------------------------------------------


def test_every_config_key_is_in_relay_agent_toml_5() -> None:
    assert missing_keys(page("relay-agent.toml.5")) == []


def test_every_default_in_relay_agent_toml_5_is_the_codes() -> None:
    assert wrong_defaults(page("relay-agent.toml.5")) == []


def test_relay_agent_toml_5_documents_no_key_the_code_refuses() -> None:
    bl = page("relay-agent.toml.5")
    expected = config_keys()
    documented_subs = {b.sub for b in bl if b.section == "SECTIONS AND KEYS" and b.sub}
    assert documented_subs == set(expected)
    for sub, keys in expected.items():
        extra = tags(bl, "SECTIONS AND KEYS", sub) - keys - {"name"}  # [aliases]' placeholder
        assert not extra, f"{sub}: {extra} documented but not accepted"


def test_example_config_keys_are_documented() -> None:
    """The shipped example config, as the parser reads it, uses only documented keys."""
    data = tomllib.loads((ROOT / "examples" / "config.toml").read_text())
    bl = page("relay-agent.toml.5")
    for name, table in data.items():
        sub = f"[[{name}]]" if isinstance(table, list) else f"[{name}]"
        entries = table if isinstance(table, list) else [table]
        if name == "aliases":
            continue  # its keys are local names, not documented one by one
        for key in {k for entry in entries for k in entry}:
            assert key in tags(bl, "SECTIONS AND KEYS", sub), f"{sub} {key}"


def test_every_command_and_flag_is_in_relay_agent_8() -> None:
    bl = page("relay-agent.8")
    assert missing_cli(bl) == []
    assert stale_cli(bl) == []


def test_every_sendmail_flag_is_in_sendmail_8() -> None:
    documented = tags(page("sendmail.8"), "OPTIONS")
    assert sendmail_flags() - documented == set()
    stale = {f for f in documented if f.startswith("-") and not sendmail_knows(f)}
    assert stale == set(), f"documented but refused by the parser: {stale}"


def test_every_mailq_flag_is_in_mailq_1() -> None:
    tree = ast.parse((ROOT / "agent" / "submit" / "mailq.py").read_text())
    flags = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and str(n.value).startswith("-")}
    assert flags
    assert flags - tags(page("mailq.1"), "OPTIONS") == set()


def _error_codes(paths: list[Path]) -> set[int]:
    """Exit codes of the agent.errors names these modules import."""
    codes = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "agent.errors":
                for alias in node.names:
                    value = getattr(errors, alias.name)
                    codes.add(value if isinstance(value, int) else value.exit_code)
    return codes


def _all_subclasses(cls: type[AgentError]) -> set[type[AgentError]]:
    subs = set(cls.__subclasses__())
    return subs | {s for sub in subs for s in _all_subclasses(sub)}


def test_exit_codes_are_documented() -> None:
    cli = [*sorted((ROOT / "agent" / "cli").glob("*.py")), ROOT / "agent" / "main.py"]
    want = {
        "relay-agent.8": {0, 1, DnsError.exit_code} | _error_codes(cli),
        "sendmail.8": {0}
        | {c.exit_code for c in _all_subclasses(AgentError) if c.__module__ == "agent.errors"},
        "mailq.1": {0, errors.ConfigError.exit_code},
    }
    mailq_tree = ast.parse((ROOT / "agent" / "submit" / "mailq.py").read_text())
    want["mailq.1"] |= {  # the codes mailq.py returns as literals
        n.value.value
        for n in ast.walk(mailq_tree)
        if isinstance(n, ast.Return) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, int)
    }
    for name, codes in want.items():
        documented = tags(page(name), "EXIT STATUS")
        assert {str(c) for c in codes} - documented == set(), name


def test_signals_environment_and_credential_order_in_relay_agent_8() -> None:
    bl = page("relay-agent.8")
    daemon = ast.parse((ROOT / "agent" / "daemon.py").read_text())
    signals = {n.attr for n in ast.walk(daemon) if isinstance(n, ast.Attribute) and n.attr.startswith("SIG")}
    assert signals >= {"SIGTERM", "SIGHUP"}
    assert signals - tags(bl, "SIGNALS") == set()
    env = {config_path.ENV_VAR, credentials.ENV_VAR, f"{credentials.ENV_VAR}_NAME"} | _environ_names()
    assert env - tags(bl, "ENVIRONMENT") == set()
    for name in ("sendmail.8", "mailq.1"):
        assert config_path.ENV_VAR in tags(page(name), "ENVIRONMENT")
    for name in ("relay-agent.8", "relay-agent.toml.5"):
        text = " ".join(b.text for b in page(name) if b.section == "CREDENTIALS")
        order = [f"{credentials.CREDENTIAL_NAME},", "password_file", f"{credentials.ENV_VAR};", "keyring"]
        where = [text.find(w) for w in order]
        assert -1 not in where and where == sorted(where), (name, order, where)
        assert f"{credentials.CREDENTIAL_NAME}-name" in text and f"{credentials.ENV_VAR}_NAME" in text


def _environ_names() -> set[str]:
    """Literal names read through os.environ anywhere in agent/ but the demo."""
    names = set()
    for path in (ROOT / "agent").rglob("*.py"):
        if "demo" in path.parts:
            continue
        for n in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and isinstance(n.func.value, ast.Attribute)
                and n.func.value.attr == "environ"
                and n.args
                and isinstance(n.args[0], ast.Constant)
            ):
                names.add(str(n.args[0].value))
    return names


# --- the checks can fail ----------------------------------------------------------------------


def _without(name: str, old: str, new: str = "") -> list[Block]:
    source = (MAN / name).read_text()
    assert old in source, old
    return blocks(source.replace(old, new))


def test_the_checks_fail_on_a_page_with_something_taken_out() -> None:
    toml5 = "relay-agent.toml.5"
    assert "[limits] min_rate" in missing_keys(_without(toml5, ".TP\n.B min_rate\n"))
    assert "[[account]] domains" in missing_keys(_without(toml5, ".TP\n.B domains\n"))
    assert "[[account]] helo_name" in missing_keys(_without(toml5, '", " helo_name'))
    assert "[quotas] smtp" in missing_keys(_without(toml5, ".TP\n.B smtp\nThe loopback"))
    assert any(w.startswith("relay.port:") for w in wrong_defaults(_without(toml5, "Default: 587.", "25.")))
    assert "relay-agent dns check --nameserver" in missing_cli(
        _without("relay-agent.8", "\\-\\-nameserver", "x")
    )
    assert "relay-agent queue hold: no section" in missing_cli(_without("relay-agent.8", '.SS "queue hold"'))
    assert stale_cli(_without("relay-agent.8", ".B \\-\\-keep\n", ".B \\-\\-keep \\-\\-fast\n"))
    documented = tags(_without("sendmail.8", '.TP\n.BI \\-V " envid"\n'), "OPTIONS")
    assert "-V" in sendmail_flags() - documented


# --- rendering --------------------------------------------------------------------------------


def _warnings(tool: str, path: Path) -> str:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANROFFSEQ": "", "MANWIDTH": "80"}
    cmd = {
        "groff": ["groff", "-ww", "-man", "-z", str(path)],
        # as lintian runs it
        "man": ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(path)],
        "mandoc": ["mandoc", "-T", "lint", str(path)],
    }[tool]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    text = proc.stderr + (proc.stdout if tool == "mandoc" else "")
    return text.strip() or ("" if proc.returncode == 0 else f"{tool} exited {proc.returncode}")


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if tool == "mandoc":
            pytest.skip("mandoc is not installed (CI installs it)")
        pytest.fail(f"{tool} is not installed (Debian: groff-base, man-db)")


def test_the_four_pages_are_there() -> None:
    assert set(PAGES) >= {"relay-agent.8", "relay-agent.toml.5", "sendmail.8", "mailq.1"}


@pytest.mark.parametrize("tool", ["groff", "man", "mandoc"])
@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_warnings(tool: str, name: str) -> None:
    _need(tool)
    assert _warnings(tool, MAN / name) == ""


@pytest.mark.parametrize("tool", ["groff", "man", "mandoc"])
def test_the_render_check_fails_on_a_broken_page(tool: str, tmp_path: Path) -> None:
    _need(tool)
    broken = tmp_path / "broken.8"
    source = (MAN / "mailq.1").read_text().replace(".SH OPTIONS", ".SH OPTIONS\n\\fQbad font\\fR\n.XX\n")
    broken.write_text(source)
    assert _warnings(tool, broken) != ""


def test_man_relay_agent_renders_the_name_line() -> None:
    _need("man")
    env = {k: v for k, v in os.environ.items() if k != "MAN_KEEP_FORMATTING"}
    out = subprocess.run(
        ["man", "-l", str(MAN / "relay-agent.8")],
        capture_output=True,
        text=True,
        env={**env, "MANWIDTH": "80"},
        timeout=60,
    ).stdout
    assert "relay-agent - durable outbound mail agent" in out.replace("\u2010", "-")
