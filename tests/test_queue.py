"""The queue directories, file formats and retry policy (no sockets)."""

from __future__ import annotations

import email
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.delivery import backoff
from agent.errors import TempError
from agent.mail import bounce
from agent.queue import queue_file, state_file
from agent.queue.ids import new_id, qid_for, valid_id
from agent.queue.store import Queue
from agent.queue.view import collect, format_mailq

ENV = queue_file.Envelope(
    "a@example.com", ("b@example.net", "c@example.net"), 1700000000.5, (("notify", "NEVER"),), 1000
)
BODY = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def q(tmp_path: Path) -> Queue:
    queue = Queue(str(tmp_path / "q"))
    queue.ensure_dirs()
    return queue


def test_enter_batch_reports_per_message_and_fails_only_the_broken_one(q: Queue) -> None:
    ids = [new_id() for _ in range(4)]
    q.enter(ENV, b"first copy", ids[0])  # entered before: idempotent, not rewritten
    (Path(q.tmp) / ids[2]).write_bytes(b"debris")  # this one's tmp name is taken: O_EXCL refuses
    results = q.enter_batch([(ENV, BODY + str(i).encode(), qid) for i, qid in enumerate(ids)])
    assert results[0] == ids[0] and q.read(ids[0]) == (ENV, b"first copy")
    assert results[1] == ids[1] and q.read(ids[1]) == (ENV, BODY + b"1")
    assert isinstance(results[2], TempError) and "cannot write queue file" in results[2].message
    assert not q.exists(ids[2]) and (Path(q.tmp) / ids[2]).read_bytes() == b"debris"
    assert results[3] == ids[3] and q.read(ids[3]) == (ENV, BODY + b"3")
    assert sorted(os.listdir(q.tmp)) == [ids[2]]


def test_enter_read_roundtrip_and_modes(q: Queue) -> None:
    qid = q.enter(ENV, BODY)
    assert valid_id(qid)
    assert q.read(qid) == (ENV, BODY)
    assert q.read_envelope(qid) == (ENV, len(BODY))
    assert stat.S_IMODE(os.stat(q.msg_path(qid)).st_mode) == 0o600
    for d in (q.path, q.tmp, q.msg, q.statedir, q.corrupt):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert os.listdir(q.tmp) == []


def test_enter_is_idempotent_for_one_id(q: Queue) -> None:
    qid = new_id()
    q.enter(ENV, BODY, qid)
    q.enter(ENV, b"other", qid)
    assert q.read(qid)[1] == BODY


def test_recover_removes_partial_tmp_files_and_says_what_they_were(q: Queue) -> None:
    # never acknowledged (no 250, no exit 0): the client retries or its maildrop file is still
    # there, so removing it loses nothing; corrupt/ is only for what fails validation
    Path(q.tmp, "0000000000000ABC").write_bytes(queue_file.encode(ENV, BODY)[:30])
    notes = q.recover()
    assert len(notes) == 1 and "removed" in notes[0] and "queue file being entered" in notes[0]
    assert os.listdir(q.tmp) == [] and os.listdir(q.corrupt) == []


def test_recover_removes_what_a_cut_short_delete_all_left(q: Queue) -> None:
    aside = Path(q.path, "deleted.1700000000000000000")
    (aside / "msg").mkdir(parents=True)
    (aside / "msg" / "0000000000000ABC").write_bytes(queue_file.encode(ENV, BODY))
    qid = q.enter(ENV, BODY)
    notes = q.recover()
    assert not aside.exists() and q.exists(qid)
    assert len(notes) == 1 and "queue delete --all" in notes[0]


def test_truncated_file_is_refused(q: Queue) -> None:
    qid = q.enter(ENV, BODY)
    data = Path(q.msg_path(qid)).read_bytes()
    Path(q.msg_path(qid)).write_bytes(data[:-5])
    with pytest.raises(queue_file.FormatError):
        q.read(qid)
    assert "corrupt" in q.quarantine(qid, "truncated")
    assert not q.exists(qid) and len(os.listdir(q.corrupt)) == 1


def test_state_roundtrip_and_listing(q: Queue) -> None:
    qid = q.enter(ENV, BODY)
    s = state_file.State("deferred", 2, 1700000100.0, "451 4.3.0 later", 0.0, {0: ("S", "")})
    q.write_state(qid, s)
    assert q.read_state(qid) == s
    items = collect(q, str(q.path) + "/none")
    assert items[0]["state"] == "deferred" and items[0]["attempts"] == 2
    assert [r["state"] for r in items[0]["recipients"]] == ["sent", "pending"]
    text = format_mailq(items)
    assert qid in text and "(451 4.3.0 later)" in text and "c@example.net" in text
    assert "b@example.net" not in text  # already delivered
    assert text.rstrip().endswith("-- 1 Kbytes in 1 Request.")
    q.remove(qid)
    assert format_mailq(collect(q, "/nonexistent")) == "Mail queue is empty\n"


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_decode_arbitrary_bytes_only_raises_format_error(data: bytes) -> None:
    for blob in (data, queue_file.MAGIC + data, queue_file.encode(ENV, BODY)[:60] + data):
        try:
            queue_file.decode(blob)
        except queue_file.FormatError:
            pass
    try:
        state_file.decode_state(data)
    except queue_file.FormatError:
        pass


@given(
    st.text(alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)), max_size=40),
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)),
            min_size=1,
            max_size=40,
        ),
        min_size=1,
        max_size=5,
    ),
    st.binary(max_size=300),
)
@settings(max_examples=200, deadline=None)
def test_valid_files_always_roundtrip(sender: str, rcpts: list[str], body: bytes) -> None:
    env = queue_file.Envelope(sender, tuple(rcpts), 12.5)
    assert queue_file.decode(queue_file.encode(env, body)) == (env, body)


def test_encode_refuses_injection() -> None:
    with pytest.raises(queue_file.FormatError):
        queue_file.encode(queue_file.Envelope("a@b\r\nrcpt evil@x", ("c@d",), 1.0), b"")


def test_backoff_doubles_to_the_cap_and_expiry() -> None:
    delays = [backoff.next_delay(n, 60, 3600, jitter=0) for n in range(1, 9)]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert all(54 <= backoff.next_delay(1, 60, 3600) <= 66 for _ in range(50))
    assert backoff.expired(0, 432000, 432000) and not backoff.expired(0, 431999, 432000)
    assert backoff.failed_gone(10, 20, 10) and not backoff.failed_gone(0, 20, 10)


def test_bounce_is_rfc3464() -> None:
    report = bounce.build(
        qid="0ABC",
        sender="a@example.com",
        failed=[bounce.FailedRecipient("b@example.net", "550 5.1.1 no such user")],
        original=b"Subject: hi\r\nFrom: a@example.com\r\n\r\nsecret body\r\n",
        hostname="host.example.com",
        mailer_daemon="MAILER-DAEMON@example.com",
        relay="relay[127.0.0.1]:587",
        arrival=1700000000.0,
    )
    m = email.message_from_bytes(report)
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    parts = m.get_payload()
    assert isinstance(parts, list) and parts[1].get_content_type() == "message/delivery-status"
    status = parts[1].get_payload()
    assert any(p["Status"] == "5.1.1" and p["Action"] == "failed" for p in status)
    assert b"secret body" not in report  # RET=HDRS by default: headers only


def test_maildrop_ids_are_deterministic_but_keyed(q: Queue, tmp_path: Path) -> None:

    f = tmp_path / "drop"
    f.write_bytes(b"x")
    st = os.stat(f)
    key = q.key()
    assert len(key) == 32 and q.key() == key == Queue(q.path).key()
    assert stat.S_IMODE(os.stat(os.path.join(q.path, "pickup.key")).st_mode) == 0o600
    assert qid_for("drop", st, key) == qid_for("drop", st, key)  # a re-pickup after a crash: same id
    assert valid_id(qid_for("drop", st, key))
    assert qid_for("drop", st, key) != qid_for("drop", st, b"other key")
