"""Group commit: many messages at once, each durably entered and signed, failures kept apart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import config
from agent.dkim.signing import Signer
from agent.errors import TempError
from agent.intake.cleanup import Cleanup, Prepared
from agent.intake.committer import Committer
from agent.queue.store import Queue
from tests.support.agent_env import AgentEnv
from tests.support.dnsmasq import DnsServer
from tests.support.verify import dkim_dns_records, verify_dkimpy, verify_perl


def _cleanup(tmp_path: Path) -> Cleanup:
    env = AgentEnv(tmp_path)  # writes a config with a DKIM key for example.com
    cfg = config.load(str(env.config))
    queue = Queue(cfg.queue.path)
    queue.ensure_dirs()
    return Cleanup(cfg, Signer(cfg), queue)


def _prepared(cleanup: Cleanup, i: int) -> Prepared:
    msg = f"From: app@example.com\nTo: t@example.net\nSubject: batch {i}\n\nbody {i}\n".encode()
    return cleanup.prepare("app@example.com", ["t@example.net"], msg)


class _BrokenDraft:
    def header(self) -> bytes:
        raise ValueError("the key cannot sign")


def test_concurrent_commits_are_each_on_disk_signed_and_independent(tmp_path: Path) -> None:
    cleanup = _cleanup(tmp_path)
    good = [_prepared(cleanup, i) for i in range(40)]
    p = _prepared(cleanup, 99)
    broken = Prepared(p.qid, p.envelope, p.body, (_BrokenDraft(),))  # type: ignore[arg-type]
    committer = Committer(cleanup.queue)

    async def run() -> list[str | BaseException]:
        jobs = [committer.commit(x) for x in good[:20]] + [committer.commit(broken)]
        jobs += [committer.commit(x) for x in good[20:]]
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        committer.close()
    assert isinstance(results[20], ValueError) and not cleanup.queue.exists(broken.qid)
    ids = [r for r in results if isinstance(r, str)]
    assert ids == [x.qid for x in good]
    records = dkim_dns_records(cleanup.cfg)
    with DnsServer(records) as dns:
        for qid in ids[:: len(ids) // 4]:
            _, message = cleanup.queue.read(qid)
            assert verify_dkimpy(message, records)
            assert verify_perl(message, dns.port)[0]
    assert sorted(cleanup.queue.ids()) == sorted(ids)


def test_commit_after_close_is_a_temporary_refusal(tmp_path: Path) -> None:
    cleanup = _cleanup(tmp_path)
    committer = Committer(cleanup.queue)
    committer.close()
    with pytest.raises(TempError):
        asyncio.run(committer.commit(_prepared(cleanup, 0)))


def test_a_message_written_after_its_session_went_away_is_still_scheduled(tmp_path: Path) -> None:
    """The client hung up while its message was being written: no 250 went out, but the file is
    on disk, so the daemon must still learn of it (else it waits for a restart or a flush)."""
    cleanup = _cleanup(tmp_path)
    entered: list[str] = []
    committer = Committer(cleanup.queue, entered.append)
    prepared = _prepared(cleanup, 1)

    async def run() -> None:
        task = asyncio.ensure_future(committer.commit(prepared))
        await asyncio.sleep(0)  # handed over to the commit thread
        task.cancel()
        for _ in range(500):
            if entered:
                return
            await asyncio.sleep(0.01)

    try:
        asyncio.run(run())
    finally:
        committer.close()
    assert entered == [prepared.qid] and cleanup.queue.exists(prepared.qid)
