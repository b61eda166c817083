"""DocumentContent.stream: the stored bytes chunk by chunk, read in threads — one hop per chunk
(the first also opening the reader), none once the document's size has come, the reader closed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

from engine.documents.model import DocumentContent


class Reader:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.threads: set[int] = set()
        self.reads = 0
        self.closed = False

    def __call__(self) -> Iterator[bytes]:
        self.threads.add(threading.get_ident())
        return self._gen()

    def _gen(self) -> Iterator[bytes]:
        try:
            for chunk in self.chunks:
                self.threads.add(threading.get_ident())
                self.reads += 1
                yield chunk
        finally:
            self.closed = True


def _stream(content: DocumentContent) -> list[bytes]:
    async def run() -> list[bytes]:
        return [c async for c in content.stream()]

    return asyncio.run(run())


def test_one_chunk_is_one_read_and_the_reader_is_closed() -> None:
    reader = Reader([b"a" * 1000])
    assert _stream(DocumentContent("0" * 64, 1000, reader)) == [b"a" * 1000]
    assert reader.reads == 1  # never asked for a chunk past the size
    assert reader.closed
    assert threading.get_ident() not in reader.threads  # read off the event loop's thread


def test_several_chunks_in_order() -> None:
    chunks = [bytes([i]) * 10 for i in range(5)]
    reader = Reader(chunks)
    assert _stream(DocumentContent("0" * 64, 50, reader)) == chunks
    assert reader.reads == 5 and reader.closed


def test_bytes_shorter_than_the_size_end_the_stream() -> None:
    """A reader that runs dry early ends the stream; the adapters' hash check refuses it."""
    reader = Reader([b"abc"])
    assert _stream(DocumentContent("0" * 64, 10, reader)) == [b"abc"]
    assert reader.closed


def test_a_digest_is_updated_in_the_reading_thread() -> None:
    import hashlib

    class Spy:
        def __init__(self) -> None:
            self.inner = hashlib.sha256()
            self.threads: set[int] = set()

        def update(self, data: bytes, /) -> None:
            self.threads.add(threading.get_ident())
            self.inner.update(data)

    chunks = [b"x" * 100, b"y" * 50]
    spy = Spy()

    async def run() -> tuple[list[bytes], int]:
        loop_thread = threading.get_ident()
        got = [c async for c in DocumentContent("0" * 64, 150, Reader(chunks)).stream(spy)]
        return got, loop_thread

    got, loop_thread = asyncio.run(run())
    assert got == chunks
    assert spy.inner.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert spy.threads and loop_thread not in spy.threads
