"""How the operator endpoints answer a store action that did not happen: one mapping for
messages and documents, so both answer the same status for the same refusal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fastapi import HTTPException

from engine.store import ActionRefused

__all__ = ["answer_refusals"]


@contextlib.contextmanager
def answer_refusals(missing: str, *invalid: type[Exception]) -> Iterator[None]:
    """Around a store action: an unknown id (``KeyError``) answers 404 ``missing``; an argument
    the store cannot take (one of ``invalid``: an unknown destination, an identifier that cannot
    be an MRN) 422; an action the state does not allow (``ActionRefused``) 409 with the reason.
    ``invalid`` is tried before ``ActionRefused``: ``UnknownDestination`` is one."""
    try:
        yield
    except KeyError:
        raise HTTPException(404, detail=missing) from None
    except invalid as exc:
        raise HTTPException(422, detail=str(exc)) from None
    except ActionRefused as exc:
        raise HTTPException(409, detail=str(exc)) from None
