"""Response bodies of the HTTP API, named by role. Metadata only: no payload ever leaves here.

A message is answered with the store's own views (``MessageSummary`` in a list, ``MessageView``
for one), serialised as they are; these are the bodies that have no view of their own.
"""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["Accepted", "ReplayAccepted"]


class Accepted(BaseModel):
    """A message was stored under this id."""

    message_id: int


class ReplayAccepted(BaseModel):
    """A stored message was received again as a new message."""

    message_id: int
    replay_of: int
