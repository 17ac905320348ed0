"""TLS for the relay connection: verification always on, never credentials in clear."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.relay.connection import RelayConnection, RelayError
from tests.support.relay_standin import RelayStandin
from tests.test_relay import MSG, connect, outcomes, relay_cfg

pytestmark = pytest.mark.timeout(60)


async def test_host_name_localhost_verifies_too(relay_standin: RelayStandin) -> None:
    c = await connect(relay_standin, host="localhost")
    await c.send("a@example.com", ["b@example.net"], MSG)
    await c.close()
    assert relay_standin.wait_for(1)[0].tls


async def test_no_starttls_refuses_without_auth(relay_standin_factory: Callable[..., RelayStandin]) -> None:
    relay = relay_standin_factory(starttls=False)
    with pytest.raises(RelayError) as err:
        await connect(relay)
    assert err.value.stage == "starttls" and "STARTTLS" in err.value.reply
    assert relay.auth_attempts == 0 and relay.messages == []


async def test_self_signed_cert_refused(relay_standin_factory: Callable[..., RelayStandin]) -> None:
    relay = relay_standin_factory(bad_cert="self-signed")
    with pytest.raises(RelayError) as err:
        await connect(relay)
    assert err.value.stage == "starttls"
    assert "certificate verif" in err.value.reply
    assert relay.auth_attempts == 0


async def test_wrong_host_name_refused(relay_standin_factory: Callable[..., RelayStandin]) -> None:
    relay = relay_standin_factory(bad_cert="wrong-name")
    with pytest.raises(RelayError) as err:
        await connect(relay)
    assert err.value.stage == "starttls"
    assert "hostname" in err.value.reply.lower() or "ip address mismatch" in err.value.reply.lower()
    assert relay.auth_attempts == 0


async def test_implicit_tls(relay_standin_factory: Callable[..., RelayStandin]) -> None:
    relay = relay_standin_factory(tls_implicit=True)
    c = await connect(relay)
    assert outcomes(await c.send("a@example.com", ["b@example.net"], MSG)) == {"b@example.net": "sent"}
    [got] = relay.wait_for(1)
    assert got.tls and got.auth_user == relay.username
    await c.close()


async def test_implicit_tls_bad_cert_is_tls_stage(relay_standin_factory: Callable[..., RelayStandin]) -> None:
    relay = relay_standin_factory(tls_implicit=True, bad_cert="self-signed")
    with pytest.raises(RelayError) as err:
        await connect(relay)
    assert err.value.stage == "tls" and relay.auth_attempts == 0


async def test_no_ca_file_means_system_trust_only(relay_standin: RelayStandin) -> None:
    # The stand-in's CA is not in the system store: without ca_file verification must fail.
    c = RelayConnection(relay_cfg(relay_standin, ca_file=""), relay_standin.password, "client.test")
    with pytest.raises(RelayError) as err:
        await c.connect()
    assert err.value.stage == "starttls" and "certificate verif" in err.value.reply
    assert relay_standin.auth_attempts == 0 and relay_standin.messages == []


def test_context_is_strict() -> None:
    import ssl

    from agent.relay.connection import tls_context

    ctx = tls_context()
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
