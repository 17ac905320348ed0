"""Relay password lookup order, file permission checks, keyring, and `credentials set|check`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import Account, Config, RelayConfig, from_dict
from agent.errors import ConfigError
from agent.relay.credentials import NO_BACKEND, find_password
from tests.support.relay_standin import RelayStandin

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
PLAINTEXT = "keyrings.alt.file.PlaintextKeyring"
FAIL = "keyring.backends.fail.Keyring"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CREDENTIALS_DIRECTORY", "RELAY_AGENT_PASSWORD", "RELAY_AGENT_CONFIG"):
        monkeypatch.delenv(var, raising=False)


def cfg_with(password_file: str = "", username: str = "user@example.com") -> Account:
    """The default account of a config with these [relay] settings."""
    return Config(relay=RelayConfig(username=username, password_file=password_file)).default_account


def write(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


# ----- lookup order (in-process; never reaches the keyring) -----


def test_credentials_directory_wins_and_loses_one_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "relay-password", "from-systemd\n\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("RELAY_AGENT_PASSWORD", "from-env")
    pf = write(tmp_path / "pw", "from-file\n")
    found = find_password(cfg_with(pf))
    assert found is not None
    assert found[0] == "from-systemd\n"
    assert found[1] == f"systemd credential {creds}/relay-password"


def test_empty_systemd_credential_falls_through_to_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "relay-password", "")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("RELAY_AGENT_PASSWORD", "from-env")
    pf = write(tmp_path / "pw", "from-file\r\n")
    assert find_password(cfg_with(pf)) == ("from-file", f"password_file {pf}")


def test_credentials_directory_without_the_file_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("RELAY_AGENT_PASSWORD", "from-env")
    assert find_password(cfg_with()) == ("from-env", "$RELAY_AGENT_PASSWORD")


def test_file_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_AGENT_PASSWORD", "from-env")
    pf = write(tmp_path / "pw", "from-file")
    found = find_password(cfg_with(pf))
    assert found is not None and found[0] == "from-file"


@pytest.mark.parametrize(("mode", "word"), [(0o644, "readable"), (0o640, "readable"), (0o620, "writable")])
def test_loose_password_file_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int, word: str
) -> None:
    monkeypatch.setenv("RELAY_AGENT_PASSWORD", "from-env")  # must not be used as a silent fallback
    pf = write(tmp_path / "pw", "secret-in-file", mode)
    with pytest.raises(ConfigError) as err:
        find_password(cfg_with(pf))
    msg = err.value.message
    assert f"{word} by group/others (mode {mode:04o})" in msg and f"chmod 600 {pf}" in msg
    assert "secret-in-file" not in msg


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_password_file_owned_by_another_user_refused(tmp_path: Path) -> None:
    pf = write(tmp_path / "pw", "x")
    os.chown(pf, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        find_password(cfg_with(pf))


def test_missing_password_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        find_password(cfg_with(str(tmp_path / "nope")))


# ----- subprocesses: keyring backends and the CLI -----


def run(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "RELAY_AGENT_PASSWORD")}
    base.update(
        {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "PYTHON_KEYRING_BACKEND": FAIL}
    )
    base.update(env or {})
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, env=base, timeout=60
    )


def cli(cmd: str, cfg: Path, tmp_path: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return run(["-m", "agent.cli.credentials", cmd, "--config", str(cfg)], tmp_path, **kw)  # type: ignore[arg-type]


def config_file(tmp_path: Path, relay: RelayStandin | None = None, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    body = relay.relay_toml() if relay else '[relay]\nusername = "user@example.com"\n'
    path.write_text(body + extra)
    return path


def test_keyring_set_then_lookup_and_check(tmp_path: Path, relay_standin: RelayStandin) -> None:
    cfg = config_file(tmp_path, relay_standin)
    env = {"PYTHON_KEYRING_BACKEND": PLAINTEXT}
    r = cli("set", cfg, tmp_path, env=env, stdin=relay_standin.password + "\n")
    assert r.returncode == 0, r.stderr
    assert "stored the relay password for user@example.com" in r.stdout and "PlaintextKeyring" in r.stdout
    assert (tmp_path / "data" / "python_keyring" / "keyring_pass.cfg").is_file()  # in our temp HOME
    assert relay_standin.password not in r.stdout + r.stderr
    # What was stored is exactly the line given, found through the keyring source.
    probe = (
        "import sys; from agent import config; from agent.relay import credentials; "
        "f = credentials.find_password(config.load(sys.argv[1]).default_account); "
        "print(f[1]); print(f[0] == sys.argv[2])"
    )
    r = run(["-c", probe, str(cfg), relay_standin.password], tmp_path, env=env)
    assert r.stdout.splitlines() == ["keyring (service relay-agent, user user@example.com)", "True"], r.stderr
    r = cli("check", cfg, tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "password from keyring" in r.stdout
    assert relay_standin.password not in r.stdout + r.stderr
    assert relay_standin.messages == [] and relay_standin.auth_attempts == 1


def test_no_keyring_backend(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    r = run(["-c", "from agent.relay.credentials import keyring_status; print(keyring_status())"], tmp_path)
    assert r.stdout.strip() == NO_BACKEND
    r = cli("set", cfg, tmp_path, stdin="pw-123456\n")
    assert r.returncode == 78 and r.stderr.strip() == f"relay-agent: {NO_BACKEND}"
    r = cli("check", cfg, tmp_path)
    assert r.returncode == 78
    assert r.stderr.strip() == f"relay-agent: no relay password found ({NO_BACKEND})"


def test_set_without_username_is_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[relay]\n")
    r = cli("set", cfg, tmp_path, env={"PYTHON_KEYRING_BACKEND": PLAINTEXT}, stdin="pw\n")
    assert r.returncode == 78 and "relay.username is not set" in r.stderr


def test_check_good(tmp_path: Path, relay_standin: RelayStandin) -> None:
    cfg = config_file(tmp_path, relay_standin)
    r = cli("check", cfg, tmp_path, env={"RELAY_AGENT_PASSWORD": relay_standin.password})
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"relay 127.0.0.1:{relay_standin.port} (starttls), user user@example.com"
    assert lines[1] == "password from $RELAY_AGENT_PASSWORD"
    assert lines[2] == f"connect ... ok (127.0.0.1[127.0.0.1]:{relay_standin.port})"
    assert lines[3] in ("starttls ... ok (TLSv1.3)", "starttls ... ok (TLSv1.2)")
    assert lines[4:] == ["auth ... ok", "quit ... ok", "credentials ok"]
    assert relay_standin.password not in r.stdout + r.stderr


def test_check_wrong_password(tmp_path: Path, relay_standin: RelayStandin) -> None:
    cfg = config_file(tmp_path, relay_standin)
    wrong = "Wr0ng-pass-987"
    r = cli("check", cfg, tmp_path, env={"RELAY_AGENT_PASSWORD": wrong})
    assert r.returncode == 75
    assert "auth ... FAILED: 535" in r.stdout
    assert "credentials check failed at auth: 535" in r.stderr
    assert wrong not in r.stdout + r.stderr and relay_standin.password not in r.stdout + r.stderr


def test_check_bad_certificate(tmp_path: Path, relay_standin_factory: Callable[..., RelayStandin]) -> None:
    relay = relay_standin_factory(bad_cert="self-signed")
    cfg = config_file(tmp_path, relay)
    r = cli("check", cfg, tmp_path, env={"RELAY_AGENT_PASSWORD": relay.password})
    assert r.returncode == 75
    assert "connect ... ok" in r.stdout
    assert "starttls ... FAILED: certificate verification failed" in r.stdout
    assert relay.auth_attempts == 0 and relay.password not in r.stdout + r.stderr


def test_check_relay_down(tmp_path: Path, relay_standin: RelayStandin) -> None:
    cfg = config_file(tmp_path, relay_standin)
    relay_standin.down()
    r = cli("check", cfg, tmp_path, env={"RELAY_AGENT_PASSWORD": relay_standin.password})
    assert r.returncode == 75 and "connect ... FAILED: Connection refused" in r.stdout


def test_each_account_has_its_own_names_in_the_same_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = from_dict(
        {
            "relay": {"username": "ops@example.com"},
            "account": [{"name": "shop-eu", "username": "m@shop.example", "domains": ["shop.example"]}],
        }
    )
    shop = cfg.account("shop-eu")
    assert shop is not None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("RELAY_AGENT_PASSWORD", "the-default-one")
    monkeypatch.setenv("RELAY_AGENT_PASSWORD_SHOP_EU", "shop-from-env")
    assert find_password(shop) == ("shop-from-env", "$RELAY_AGENT_PASSWORD_SHOP_EU")
    assert find_password(cfg.default_account) == ("the-default-one", "$RELAY_AGENT_PASSWORD")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "relay-password-shop-eu").write_text("shop-from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert find_password(shop) == ("shop-from-systemd", f"systemd credential {creds}/relay-password-shop-eu")
    assert find_password(cfg.default_account) == ("the-default-one", "$RELAY_AGENT_PASSWORD")  # not shop's
