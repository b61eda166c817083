"""HL7v2: the ER7 codec, batch files, ACKs, message structures and validation."""

from engine.hl7v2.codec import (
    Delimiters,
    Message,
    MessageType,
    Repetition,
    Segment,
    decode,
    parse_message,
    split_messages,
)
from engine.hl7v2.escape import escape, unescape
from engine.hl7v2.path import Path, parse_path
from engine.hl7v2.structure import structure_for

__all__ = [
    "Delimiters",
    "Message",
    "MessageType",
    "Path",
    "Repetition",
    "Segment",
    "decode",
    "escape",
    "parse_message",
    "parse_path",
    "split_messages",
    "structure_for",
    "unescape",
]
