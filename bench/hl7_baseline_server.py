"""The non-durable baseline: python-hl7's own asyncio MLLP server that parses each message and
ACKs it (``create_ack``) without storing anything. ``python -m bench.hl7_baseline_server PORT``."""

from __future__ import annotations

import asyncio
import sys

import hl7
from hl7.mllp import start_hl7_server


async def _handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    async with await start_hl7_server(_handle, host="127.0.0.1", port=port, limit=1 << 20) as srv:
        print("ready", flush=True)
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
