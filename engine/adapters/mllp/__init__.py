"""MLLP (HL7 v2.5.1 appendix C, Minimal Lower Layer Protocol): framing, a server and a client."""

from engine.adapters.mllp.framing import END_BLOCK, START_BLOCK, FrameReader, FrameTooLarge, frame
from engine.adapters.mllp.server import MLLPServer

__all__ = ["END_BLOCK", "START_BLOCK", "FrameReader", "FrameTooLarge", "MLLPServer", "frame"]
