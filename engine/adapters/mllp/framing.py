"""MLLP framing: ``<VT> message <FS><CR>`` (HL7 v2.5.1 appendix C.4.3, MLLP release 2 block format).

The reader is a plain state machine fed with whatever bytes arrive, so it handles a frame split
across
many packets as well as several frames in one packet. Bytes outside a frame (line noise, a sender
that forgot the start block) are counted and dropped, never passed on as a message.
"""

from __future__ import annotations

__all__ = ["END_BLOCK", "START_BLOCK", "FrameReader", "FrameTooLarge", "frame"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"


def frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP start and end blocks."""
    return START_BLOCK + payload + END_BLOCK


class FrameTooLarge(Exception):
    """A frame grew past the configured maximum before its end block arrived.

    ``head`` holds the first bytes of the frame, so the caller can still read its MSH and answer
    with a NAK. ``frames`` holds the frames the same :meth:`FrameReader.feed` completed before the
    overflow (one read can carry a whole message and the start of an oversize one): they were
    received whole and the caller must handle them, in order, before the refusal.
    """

    def __init__(self, limit: int, head: bytes, frames: list[bytes] | None = None) -> None:
        super().__init__(f"MLLP frame larger than {limit} bytes")
        self.limit = limit
        self.head = head
        self.frames: list[bytes] = frames if frames is not None else []


class FrameReader:
    """Incremental MLLP deframer."""

    __slots__ = ("max_bytes", "_buf", "_in_frame", "skipped", "noise")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._in_frame = False
        #: bytes seen outside any frame and dropped
        self.skipped = 0
        #: bytes outside a frame since the last start block (the listener bounds this: noise
        #: alone must not hold a connection open)
        self.noise = 0

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not ended (for in-frame timeouts)."""
        return self._in_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame completed by them (payload only).

        Each byte is searched once (a frame arriving in 64 KiB packets costs linear time). A frame
        growing past ``max_bytes`` raises :class:`FrameTooLarge` carrying the frames completed
        before it in these bytes; bytes after the oversize frame's end block in the same read are
        not read (the listener closes the connection: messages it never acknowledged stay the
        sender's to send again).
        """
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        n = len(data)
        while pos < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self.skipped += n - pos
                    self.noise += n - pos
                    return out
                self.skipped += start - pos
                self.noise = 0
                pos = start + 1
                self._in_frame = True
                buf.clear()
                continue
            # in a frame: the end block may straddle the previous packet
            if buf and buf[-1:] == b"\x1c" and data[pos : pos + 1] == b"\x0d":
                del buf[-1:]
                out.append(self._complete())
                pos += 1
                continue
            end = data.find(END_BLOCK, pos)
            stop = n if end < 0 else end
            restart = data.rfind(START_BLOCK, pos, stop)
            if restart >= 0:
                # a start block inside a frame: the earlier frame was never closed and MLLP cannot
                # recover it, so it is dropped and the new frame begins here
                self.skipped += len(buf) + (restart - pos) + 1
                buf.clear()
                pos = restart + 1
            buf += data[pos:stop]
            if len(buf) > self.max_bytes:
                head = bytes(buf[:4096])
                buf.clear()
                self._in_frame = False
                if end >= 0:
                    pos = end + 2
                else:
                    pos = n
                raise FrameTooLarge(self.max_bytes, head, out)
            if end < 0:
                return out
            out.append(self._complete())
            pos = end + 2
        return out

    def _complete(self) -> bytes:
        payload = bytes(self._buf)
        self._buf.clear()
        self._in_frame = False
        return payload
