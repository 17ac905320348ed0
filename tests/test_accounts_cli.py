"""The tools around several relay accounts: `credentials set|check --account`, `dns check` expecting
each domain's token for the account that sends it, and the unit drop-in `install` writes with one
systemd credential per account (and, in capture mode, the Maildir made writable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import config
from agent.dns.token import token_for
from agent.install import dropin
from agent.relay import credentials
from tests.support import dnsmasq
from tests.support.relay_standin import RelayStandin

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PLAINTEXT = "keyrings.alt.file.PlaintextKeyring"
FAIL_BACKEND = "keyring.backends.fail.Keyring"
USERS = {"ops@example.com": "default-pw-1", "mail@shop.example": "shop-pw-2", "web@web.example": "web-pw-3"}


def accounts_toml(relay: RelayStandin | None = None, capture_dir: str = "") -> str:
    head = relay.relay_toml() if relay else '[relay]\nusername = "ops@example.com"\n'
    if capture_dir:
        head += f'mode = "capture"\ncapture_dir = "{capture_dir}"\n'
    return (
        head
        + '[sender]\ndefault_from = "cron@example.com"\n'
        + '[[account]]\nname = "shop"\nusername = "mail@shop.example"\n'
        + 'domains = ["shop.example", "shop.se"]\n'
        + '[[account]]\nname = "web-eu"\nusername = "web@web.example"\ndomains = ["web.example"]\n'
    )


def run(
    args: list[str], tmp: Path, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("RELAY_AGENT_", "CREDENTIALS_DIRECTORY"))
    }
    base |= {"HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data"), "PYTHON_KEYRING_BACKEND": FAIL_BACKEND}
    base |= env or {}
    return subprocess.run(
        [PYTHON, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, env=base, timeout=60
    )


def creds(cmd: str, cfg: Path, tmp: Path, *extra: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run(["-m", "agent.cli.credentials", cmd, "--config", str(cfg), *extra], tmp, **kw)  # type: ignore[arg-type]


# ----- credentials ------------------------------------------------------------------


def test_check_without_flag_checks_every_account_one_block_each(tmp_path: Path) -> None:
    with RelayStandin(users=USERS) as relay:
        cfg = tmp_path / "config.toml"
        # [relay]'s username is the stand-in's first user: ops@example.com
        cfg.write_text(accounts_toml(relay))
        env = {
            "RELAY_AGENT_PASSWORD": USERS["ops@example.com"],
            "RELAY_AGENT_PASSWORD_SHOP": USERS["mail@shop.example"],
            "RELAY_AGENT_PASSWORD_WEB_EU": "Wr0ng-pass-987",
        }
        r = creds("check", cfg, tmp_path, env=env)
        assert r.returncode == 75, r.stdout + r.stderr
        blocks = r.stdout.split("\n\n")
        assert [b.splitlines()[0] for b in blocks] == ["account default", "account shop", "account web-eu"]
        for block, user, var in (
            (blocks[0], "ops@example.com", "$RELAY_AGENT_PASSWORD"),
            (blocks[1], "mail@shop.example", "$RELAY_AGENT_PASSWORD_SHOP"),
        ):
            lines = block.splitlines()
            assert lines[1] == f"relay 127.0.0.1:{relay.port} (starttls), user {user}"
            assert lines[2] == f"password from {var}"
            assert lines[-3:] == ["auth ... ok", "quit ... ok", "credentials ok"]
        assert "auth ... FAILED: 535" in blocks[2] and "credentials ok" not in blocks[2]
        assert r.stderr.startswith("relay-agent: account web-eu: credentials check failed at auth: 535")
        assert len(r.stderr.splitlines()) == 1
        assert relay.auth_attempts == 3  # one login per account, web-eu's refused
        for pw in [*USERS.values(), "Wr0ng-pass-987"]:
            assert pw not in r.stdout + r.stderr


def test_check_one_account_and_an_unknown_name(tmp_path: Path) -> None:
    with RelayStandin(users=USERS) as relay:
        cfg = tmp_path / "config.toml"
        cfg.write_text(accounts_toml(relay))
        env = {"RELAY_AGENT_PASSWORD_SHOP": USERS["mail@shop.example"]}  # the default has none: not checked
        r = creds("check", cfg, tmp_path, "--account", "shop", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"relay 127.0.0.1:{relay.port} (starttls), user mail@shop.example"
        assert lines[-1] == "credentials ok" and relay.auth_attempts == 1
        r = creds("check", cfg, tmp_path, "--account", "nope")
        assert r.returncode == 64
        assert r.stderr.strip() == (
            "relay-agent: --account nope: no such account in the config (accounts: default, shop, web-eu)"
        )


def test_set_stores_under_the_accounts_username(tmp_path: Path) -> None:
    with RelayStandin(users=USERS) as relay:
        cfg = tmp_path / "config.toml"
        cfg.write_text(accounts_toml(relay))
        env = {"PYTHON_KEYRING_BACKEND": PLAINTEXT}
        r = creds("set", cfg, tmp_path, "--account", "shop", env=env, stdin=USERS["mail@shop.example"] + "\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("stored the relay password for mail@shop.example (account shop, ")
        probe = (
            "import sys; from agent import config; from agent.relay import credentials; "
            "c = config.load(sys.argv[1]); "
            "print(credentials.find_password(c.account('shop'))[1]); "
            "print(credentials.find_password(c.default_account))"
        )
        r = run(["-c", probe, str(cfg)], tmp_path, env=env)
        assert r.stdout.splitlines() == ["keyring (service relay-agent, user mail@shop.example)", "None"]
        r = creds("check", cfg, tmp_path, "--account", "shop", env=env)
        assert r.returncode == 0 and "password from keyring" in r.stdout, r.stdout + r.stderr
        # without --account: the default account, under [relay]'s username
        r = creds("set", cfg, tmp_path, env=env, stdin="default-pw-1\n")
        assert r.stdout.startswith("stored the relay password for ops@example.com (service relay-agent, ")


# ----- dns check ----------------------------------------------------------------------


def test_dns_check_expects_the_token_of_the_account_that_sends(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(accounts_toml())
    records = {
        "example.com": [token_for("ops@example.com")],
        "shop.example": [token_for("mail@shop.example")],
        "eu.shop.example": [token_for("mail@shop.example")],  # a subdomain: the parent's account
        "shop.se": [token_for("ops@example.com")],  # the default's token where shop's is needed
        "web.example": [token_for("web@web.example"), token_for("ops@example.com")],
    }
    with dnsmasq.DnsServer(records) as dns:
        code = "from agent.cli.dns import app; app()"
        base = ["-c", code, "check", "--config", str(cfg), "--nameserver", dns.nameserver, "--json"]
        r = run(base, tmp_path)
        r2 = run([*base, "eu.shop.example", "other.example"], tmp_path)
    assert r.returncode == 1, r.stderr  # shop.se's token, and the DKIM keys nobody configured
    tokens = {d["domain"]: d for d in json.loads(r.stdout) if d["check"] == "token"}
    # the default domains: [[dkim]] (none here), default_from's, then every account's
    assert list(tokens) == ["example.com", "shop.example", "shop.se", "web.example"]
    assert (
        tokens["example.com"]["status"] == "PASS" and "(account default)" in tokens["example.com"]["detail"]
    )
    assert tokens["shop.example"]["status"] == "PASS"
    assert tokens["shop.example"]["detail"].startswith(f"{token_for('mail@shop.example')} present for mail@")
    assert "(account shop)" in tokens["shop.example"]["detail"]
    shop_se = tokens["shop.se"]
    assert shop_se["status"] == "FAIL" and "mail@shop.example (account shop)" in shop_se["detail"]
    assert shop_se["fix"] == f'shop.se. IN TXT "{token_for("mail@shop.example")}"'
    assert tokens["web.example"]["status"] == "PASS" and "(account web-eu)" in tokens["web.example"]["detail"]
    assert token_for("ops@example.com") in tokens["web.example"]["detail"]  # the other token, named
    named = {d["domain"]: d for d in json.loads(r2.stdout) if d["check"] == "token"}
    assert (
        named["eu.shop.example"]["status"] == "PASS"
        and "(account shop)" in named["eu.shop.example"]["detail"]
    )
    other = named["other.example"]
    assert (
        other["status"] == "FAIL"
        and other["fix"] == f'other.example. IN TXT "{token_for("ops@example.com")}"'
    )


# ----- install: the drop-in -------------------------------------------------------------


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [PYTHON, "-c", "from agent.cli.install import app; app()", *args, "--root", str(root)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")


def target(tmp: Path, toml: str) -> Path:
    root = tmp / "root"
    (root / "etc/relay-agent").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/relay-agent/config.toml").write_text(toml)
    return root


def unit_settings(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def test_install_writes_one_credential_per_account(tmp_path: Path) -> None:
    root = target(tmp_path, accounts_toml())
    r = install(root, "install", "--dry-run")
    assert r.returncode == 0, r.stderr
    drop = root / dropin.DROPIN.lstrip("/")
    assert f"would: drop-in {drop} mode 0644 (LoadCredential=relay-password-shop, " in r.stdout
    assert not drop.exists()
    r = install(root, "install")
    assert r.returncode == 0, r.stderr
    cfg = config.load(str(root / "etc/relay-agent/config.toml"))
    names = [credentials.credential_name(a) for a in cfg.extra_accounts]  # what the daemon reads
    assert names == ["relay-password-shop", "relay-password-web-eu"]
    assert unit_settings(drop) == [
        (key, f"{name}:{value}")
        for name in names
        for key, value in (("LoadCredential", f"/etc/relay-agent/{name}"), ("SetCredential", "\\n"))
    ]
    unit = root / "etc/systemd/system/relay-agent.service"
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (verify.returncode, verify.stderr) == (0, "")
    # systemd-analyze does read the drop-in beside the unit: a bad key in it would be reported
    text = drop.read_text()
    drop.write_text(text + "NoSuchKey=1\n")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "NoSuchKey" in verify.stderr
    drop.write_text(text)

    # an account removed, install run again: the drop-in follows the config
    (root / "etc/relay-agent/config.toml").write_text(
        accounts_toml().split('[[account]]\nname = "web-eu"')[0]
    )
    assert install(root, "install").returncode == 0
    assert [k for k, _ in unit_settings(drop)] == ["LoadCredential", "SetCredential"]
    assert "relay-password-web-eu" not in drop.read_text()
    # no account left: no drop-in
    (root / "etc/relay-agent/config.toml").write_text('[relay]\nusername = "ops@example.com"\n')
    r = install(root, "install")
    assert r.returncode == 0 and "the config needs no drop-in" in r.stdout, r.stdout
    assert not drop.exists()
    # uninstall takes the drop-in directory only when nothing else is in it
    (root / "etc/relay-agent/config.toml").write_text(accounts_toml())
    assert install(root, "install").returncode == 0 and drop.exists()
    assert install(root, "uninstall").returncode == 0
    assert not drop.exists() and not drop.parent.exists()


def test_install_in_capture_mode_makes_the_maildir_writable(tmp_path: Path) -> None:
    root = target(tmp_path, accounts_toml(capture_dir="/srv/staging mail"))
    r = install(root, "install")
    assert r.returncode == 0, r.stderr
    drop = root / dropin.DROPIN.lstrip("/")
    assert ("ReadWritePaths", '"-/srv/staging mail"') in unit_settings(drop)
    made = root / "srv/staging mail"
    assert made.is_dir() and (made.stat().st_mode & 0o777) == 0o700
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(root / "etc/systemd/system/relay-agent.service")],
        capture_output=True,
        text=True,
    )
    assert (verify.returncode, verify.stderr) == (0, "")


def test_only_the_dropin_for_a_package_install(tmp_path: Path) -> None:
    """The Debian package owns the unit, stubs and links: `install --only-dropin` writes the drop-in
    the config asks for and touches nothing else."""
    root = target(tmp_path, accounts_toml())
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    r = install(root, "install", "--only-dropin", "--dry-run")
    assert r.returncode == 0, r.stderr
    drop = root / dropin.DROPIN.lstrip("/")
    steps = [line for line in r.stdout.splitlines() if line.startswith("would: ")]
    assert steps[0].startswith(f"would: drop-in {drop} mode 0644 (LoadCredential=relay-password-shop, ")
    assert len(steps) == 2 and "daemon-reload" in steps[1], r.stdout
    r = install(root, "install", "--only-dropin")
    assert r.returncode == 0, r.stderr
    after = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert set(after) - set(before) == {"etc/systemd", "etc/systemd/system", *_parents(dropin.DROPIN)}
    assert (
        "LoadCredential",
        "relay-password-web-eu:/etc/relay-agent/relay-password-web-eu",
    ) in unit_settings(drop)


def _parents(path: str) -> set[str]:
    rel = Path(path.lstrip("/"))
    return {str(rel), *(str(p) for p in rel.parents if str(p) not in (".", "etc"))}
