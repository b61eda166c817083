"""The MLLP listener with real peers: python-hl7's MLLP clients and raw sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hl7
import pytest
from hl7.client import MLLPClient
from hl7.mllp import open_hl7_connection

from engine.adapters.mllp.server import MLLPServer
from engine.flow.ingest import Ingest
from engine.hl7v2.codec import parse_message
from engine.service import _MLLPHandler
from engine.store import SqlMessageStore, create_db_engine

MSG = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|{cid}|P|2.5.1\r"
    "PID|1||MRN1^^^CLINIC^MR||Testpatient^Alice\r"
)


@contextmanager
def running_server(tmp_path: Path, **limits: float) -> Iterator[tuple[int, SqlMessageStore]]:
    """A listener on an ephemeral port, in its own loop thread, backed by a SQLite store."""
    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    loop = asyncio.new_event_loop()
    server = MLLPServer(_MLLPHandler(Ingest(store)), host="127.0.0.1", port=0, **limits)  # type: ignore[arg-type]
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.bound_port, store
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        db.dispose()


def recv_frame(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    return buf


def test_python_hl7_sync_client_gets_acks(tmp_path: Path) -> None:
    with running_server(tmp_path) as (port, store):
        client = MLLPClient("127.0.0.1", port)
        try:
            for i in range(5):
                reply = client.send_message(MSG.format(cid=f"S{i}"))
                ack = parse_message(reply)
                assert ack.get("MSA-1") == "AA" and ack.get("MSA-2") == f"S{i}"
        finally:
            client.close()
        assert sorted(r.control_id or "" for r in store.list()) == [f"S{i}" for i in range(5)]


def test_python_hl7_asyncio_client_gets_acks(tmp_path: Path) -> None:
    async def talk(port: int) -> list[str]:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        out = []
        for i in range(3):
            writer.writemessage(hl7.parse(MSG.format(cid=f"A{i}")))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 5)
            out.append(str(ack.segment("MSA")[2]))
        writer.close()
        await writer.wait_closed()
        return out

    with running_server(tmp_path) as (port, _store):
        assert asyncio.run(talk(port)) == ["A0", "A1", "A2"]


def test_split_and_merged_frames_and_garbage(tmp_path: Path) -> None:
    with running_server(tmp_path) as (port, store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            one = b"\x0b" + MSG.format(cid="P1").encode() + b"\x1c\r"
            # garbage, then a frame split in three packets
            sock.sendall(b"noise\r\n" + one[:10])
            sock.sendall(one[10:-1])
            sock.sendall(one[-1:])
            assert parse_message(recv_frame(sock)).get("MSA-2") == "P1"
            # two frames in one packet: two ACKs in order
            sock.sendall(
                b"\x0b" + MSG.format(cid="P2").encode() + b"\x1c\r"
                b"\x0b" + MSG.format(cid="P3").encode() + b"\x1c\r"
            )
            acks = [parse_message(recv_frame(sock)).get("MSA-2") for _ in range(2)]
            assert acks == ["P2", "P3"]
        assert len(store.list()) == 3


def test_garbage_frame_is_stored_and_rejected(tmp_path: Path) -> None:
    with running_server(tmp_path) as (port, store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\x0bnot an HL7 message at all\x1c\r")
            ack = parse_message(recv_frame(sock))
            assert ack.get("MSA-1") == "AR"
        [rec] = store.list()
        assert rec.state == "error" and store.raw(rec.id) == b"not an HL7 message at all"


def test_oversize_frame_gets_nak_and_close_others_unaffected(tmp_path: Path) -> None:
    with running_server(tmp_path, max_message_bytes=2048) as (port, store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as other:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as big:
                big.sendall(b"\x0b" + MSG.format(cid="BIG").encode() + b"NTE|1||" + b"x" * 4000)
                nak = parse_message(recv_frame(big))
                assert nak.get("MSA-1") == "AR" and nak.get("MSA-2") == "BIG"
                assert big.recv(10) == b""  # closed after the NAK
            other.sendall(b"\x0b" + MSG.format(cid="OK").encode() + b"\x1c\r")
            assert parse_message(recv_frame(other)).get("MSA-2") == "OK"
        # the oversize frame is accounted for (tests/flow/test_frames.py), never taken
        states = sorted((r.control_id or "", r.state) for r in store.list())
        assert states == [("BIG", "error"), ("OK", "received")]


def test_a_whole_frame_before_an_oversize_one_in_the_same_read_is_taken_and_acked(
    tmp_path: Path,
) -> None:
    # issue 14: the whole frame was dropped with the overflow that followed it in one read
    with running_server(tmp_path, max_message_bytes=2048) as (port, store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"\x0b" + MSG.format(cid="FIRST").encode() + b"\x1c\r"
                b"\x0b" + MSG.format(cid="BIG").encode() + b"NTE|1||" + b"x" * 4000
            )
            ack = parse_message(recv_frame(sock))
            assert ack.get("MSA-1") == "AA" and ack.get("MSA-2") == "FIRST"
            nak = parse_message(recv_frame(sock))
            assert nak.get("MSA-1") == "AR" and nak.get("MSA-2") == "BIG"
            assert sock.recv(10) == b""  # closed after the NAK, as before
        states = sorted((r.control_id or "", r.state) for r in store.list())
        assert states == [("BIG", "error"), ("FIRST", "received")]


def test_slow_sender_is_cut_off_by_the_frame_timeout(tmp_path: Path) -> None:
    with running_server(tmp_path, frame_timeout_s=0.5) as (port, store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\x0bMSH|^~\\&|SLOW")
            assert sock.recv(10) == b""  # closed, no ACK for half a message
        assert store.list() == []


def test_idle_connection_is_closed(tmp_path: Path) -> None:
    with running_server(tmp_path, idle_timeout_s=0.3) as (port, _store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(10) == b""


def test_connection_limit_makes_room_by_closing_an_idle_connection(tmp_path: Path) -> None:
    # the full refusal (no connection idle) is in test_mllp_abuse.py
    with running_server(tmp_path, max_connections=1) as (port, _store):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
            first.sendall(b"\x0b" + MSG.format(cid="C1").encode() + b"\x1c\r")
            assert parse_message(recv_frame(first)).get("MSA-2") == "C1"
            with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
                second.sendall(b"\x0b" + MSG.format(cid="C2").encode() + b"\x1c\r")
                assert parse_message(recv_frame(second)).get("MSA-2") == "C2"
                try:
                    assert first.recv(10) == b""  # idle, so closed to admit the second
                except ConnectionResetError:
                    pass  # closed hard: also closed


@pytest.mark.parametrize("n_clients", [4])
def test_concurrent_senders_all_stored_once(tmp_path: Path, n_clients: int) -> None:
    with running_server(tmp_path) as (port, store):

        def send(k: int) -> list[str]:
            c = MLLPClient("127.0.0.1", port)
            try:
                return [
                    parse_message(c.send_message(MSG.format(cid=f"K{k}-{i}"))).get("MSA-2")
                    for i in range(10)
                ]
            finally:
                c.close()

        results: dict[int, list[str]] = {}
        threads = [
            threading.Thread(target=lambda k=k: results.__setitem__(k, send(k)))
            for k in range(n_clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for k in range(n_clients):
            assert results[k] == [f"K{k}-{i}" for i in range(10)]
        assert len(store.list(limit=1000)) == n_clients * 10
