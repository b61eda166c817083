"""The console's templates: one Jinja2 environment, autoescaped, loaded from ``templates/``.

``render(request, "page.html", user=user, **context)`` answers an HTML page. Every template
extends ``base.html`` (navigation by role, the user's name, log-out form) and puts forms' CSRF
token in a hidden ``csrf_token`` field: ``{{ csrf_field() }}``. No inline script or style
attribute: the CSP forbids them; behaviour goes in ``static/console.js`` (by ``data-`` attributes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from engine import __version__
from engine.console.auth import ConsoleUser

__all__ = ["TEMPLATES", "environment", "first_page", "patient", "render"]

TEMPLATES = Path(__file__).parent / "templates"

#: the navigation: (path under /console, label, roles that see it; empty: everyone)
NAV: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("/console/", "Dashboard", frozenset({"viewer", "integration"})),
    ("/console/routes", "Routes", frozenset({"viewer", "integration"})),
    ("/console/messages", "Messages", frozenset({"viewer"})),
    ("/console/workbench", "Workbench", frozenset({"viewer", "integration"})),
    ("/console/documents", "Documents", frozenset({"front-desk", "viewer"})),
    ("/console/worklist", "Worklist", frozenset({"front-desk", "viewer"})),
    ("/console/reports", "Reports", frozenset({"viewer"})),
    ("/console/alerts", "Alerts", frozenset({"viewer", "integration"})),
    ("/console/users", "Users", frozenset()),
    ("/console/audit", "Audit", frozenset()),
)

_environment: Environment | None = None


def patient(key: str | None, mrn: str | None = None) -> str:
    """A patient as every page shows it (the ``patient`` filter): ``AUTHORITY|MRN``, or the
    MRN alone when there is no assigning authority (``|DEMO1001`` is ``DEMO1001``). ``key`` is
    a patient key (``authority|mrn``, as messages, deliveries and the audit trail store it), or
    with ``mrn`` the authority alone (a document's two fields)."""
    if mrn is not None:
        key = f"{key or ''}|{mrn}"
    if not key:
        return ""
    return key[1:] if key.startswith("|") else key


def environment() -> Environment:
    global _environment
    if _environment is None:
        _environment = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html", "svg", "xml"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _environment.filters["patient"] = patient
    return _environment


def _nav(user: ConsoleUser | None) -> list[tuple[str, str]]:
    if user is None:
        return []
    roles = {r.value for r in user.roles}
    if "admin" in roles:
        return [(path, label) for path, label, _ in NAV]
    return [(path, label) for path, label, who in NAV if who and roles & who]


def first_page(user: ConsoleUser) -> str | None:
    """The first page of the navigation ``user``'s roles may open (where a login lands when the
    dashboard is not one of them: the front desk's documents), None when there is none."""
    pages = _nav(user)
    return pages[0][0] if pages else None


def render(
    request: Request,
    template: str,
    *,
    user: ConsoleUser | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page ``template`` rendered for ``user`` (None on the login page)."""
    token = user.csrf_token if user is not None else context.get("csrf_token", "")

    def csrf_field() -> Markup:
        return Markup('<input type="hidden" name="csrf_token" value="{}">').format(escape(token))

    html = (
        environment()
        .get_template(template)
        .render(
            request=request,
            user=user,
            nav=_nav(user),
            path=request.url.path,
            csrf_token=token,
            csrf_field=csrf_field,
            version=__version__,
            # the login page passes its pre-session token as ``csrf_token`` (taken above)
            **{k: v for k, v in context.items() if k != "csrf_token"},
        )
    )
    return HTMLResponse(html, status_code=status_code)
