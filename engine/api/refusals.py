"""How the operator endpoints answer a store action that did not happen: one mapping for
messages and documents, so both answer the same status for the same refusal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

from fastapi import HTTPException, Request, status

from engine.api.auth import Principal, Role
from engine.api.deps import peer_of
from engine.api.ports import AuditPort
from engine.store import ActionRefused, Who

__all__ = ["answer_refusals", "caller_as", "refuse_role"]


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


def caller_as(
    request: Request,
    port: AuditPort,
    principal: Principal,
    role: Role,
    action: str,
    message_id: int | None = None,
) -> Who:
    """The caller as an audit actor when they hold ``role``; otherwise the refusal is recorded
    (:func:`refuse_role`) and answered 403. For the dependencies of audited actions, which name
    ``role`` in their closure (the OpenAPI document reads it there)."""
    who = Who(principal.subject, "api", peer_of(request))
    if not principal.may(role):
        refuse_role(port, who, action, role.value, message_id=message_id)
    return who


def refuse_role(
    port: AuditPort,
    who: Who,
    action: str,
    needed: str,
    *,
    message_id: int | None = None,
    subject: str = "",
) -> NoReturn:
    """A caller without the role ``needed``: the refusal recorded in the audit trail (``subject``
    before the reason: ``document 7: ``), then 403."""
    port.record_audit(
        action=action,
        actor=who.actor,
        source=who.source,
        peer=who.peer,
        message_id=message_id,
        outcome="refused",
        detail=f"{subject}requires the {needed} role",
    )
    raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"requires the {needed} role")
