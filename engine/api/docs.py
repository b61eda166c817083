"""``/docs``: the API's reference, rendered on the server from its OpenAPI document; and the
document's security (HTTP bearer JWT) declared on every operation that needs a token.

FastAPI's own ``/docs`` is Swagger UI loaded from a CDN (script, stylesheet and icon from
jsdelivr): the console's rule is that nothing comes from a CDN and no inline script runs (CSP),
so a practice's browser reaches nothing but the engine. This page is plain HTML built from the
same document ``/openapi.json`` serves — each operation with its summary, parameters, body,
responses and the role it needs — styled by the console's own stylesheet, with no script at all.

Security, as OpenAPI 3.1 states it (§4.8.30, Security Requirement Object): one scheme,
``bearerAuth`` (``type: http``, ``scheme: bearer``, ``bearerFormat: JWT``, RFC 6750), and on each
operation that reads the caller's token ``security: [{bearerAuth: [ROLE]}]`` (one requirement
per role when any of several will do). 3.1 lets a non-OAuth scheme list *role names*; the
engine's roles are the API's, and admin may do everything.
An operation is taken to need a token when its dependencies include
:func:`engine.api.auth.current_principal`, and the role it needs is the ``role`` a dependency
factory closed over (``require(role)``, and the endpoints' own audited checks). Such an
operation also declares its refusals: 401 (no token, or one not valid), 403 (without the role)
and 503 (the identity provider's key set cannot be fetched). Every operation declares its other
refusals as the range ``4XX`` (JSON with a ``detail``). ``/metrics`` is open or needs the
viewer role as configured; open operations (``/healthz``, ``/readyz``, the JWKS) declare
``security: []``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute, iter_route_contexts
from jinja2 import Environment, select_autoescape

from engine.api.auth import Role, current_principal

__all__ = ["SCHEME", "install_docs", "operation_security", "render_docs"]

#: the security scheme's name in ``components.securitySchemes``
SCHEME = "bearerAuth"

_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": (
        "A JWT in `Authorization: Bearer <token>` (RFC 6750), signed by the engine's dev secret "
        "(`engine token --role ROLE`), a configured public key, or the identity provider's "
        "JWKS. Its roles (`roles` claim or `scope`): admin, integration, viewer, front-desk; "
        "admin may do everything."
    ),
}

_ERROR = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {"detail": {"type": "string"}},
            "required": ["detail"],
        }
    }
}

#: every operation's other refusals (404, 409, 413, 415, ...): the range a specific status
#: (FastAPI's 422, the refusals above) refines; the API answers each as JSON with a ``detail``
_CLIENT_ERRORS = (
    "Refused: `detail` says why (an unknown id, a conflict, a body too large or of the wrong "
    "type, ...)"
)
_DETAIL: dict[str, Any] = {
    "schema": {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}
}

#: a 422 is FastAPI's validation error (``detail``: a list of what failed where) or the
#: API's own reading of a parameter (``detail``: a sentence, e.g. an unknown state named)
_UNPROCESSABLE = {
    "title": "Unprocessable",
    "type": "object",
    "properties": {
        "detail": {
            "anyOf": [
                {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                {"type": "string"},
            ]
        }
    },
    "required": ["detail"],
}

#: an operation under ``/fhir`` answers its refusals as FHIR does, an OperationOutcome
_OPERATION_OUTCOME = {
    "schema": {
        "type": "object",
        "properties": {"resourceType": {"const": "OperationOutcome"}},
        "required": ["resourceType", "issue"],
    }
}

_REFUSALS = {
    "401": {"description": "No bearer token, or one that is not valid", "content": _ERROR},
    "403": {"description": "The token lacks the role this operation needs", "content": _ERROR},
    "503": {"description": "The identity provider's key set cannot be fetched", "content": _ERROR},
}


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _roles_of(call: Callable[..., Any] | None) -> tuple[Role, ...]:
    """The role(s) a dependency factory closed over: ``require(role)`` and the messages
    endpoints' audited check close over ``role``, the documents endpoints' over ``roles``
    (any one of them will do)."""
    if call is None or not inspect.isfunction(call):
        return ()
    found = inspect.getclosurevars(call).nonlocals
    role, roles = found.get("role"), found.get("roles")
    if isinstance(role, Role):
        return (role,)
    if isinstance(roles, tuple) and roles and all(isinstance(r, Role) for r in roles):
        return roles
    return ()


def operation_security(route: Any) -> tuple[bool, tuple[Role, ...]]:
    """Whether the route (an APIRoute, or FastAPI's context of an included one) reads a bearer
    token, and the roles any one of which it requires (none: any valid token)."""
    needs_token, roles = False, tuple[Role, ...]()
    for dependant in _dependants(route.dependant):
        if dependant.call is current_principal:
            needs_token = True
        roles = roles or _roles_of(dependant.call)
    return needs_token, roles


def _refine_errors(path: str, responses: dict[str, Any]) -> None:
    """Declare the refusals as the API answers them: 422 in either shape, any other 4xx as
    JSON with a ``detail`` (under ``/fhir``, or as an OperationOutcome)."""
    unprocessable = responses.get("422", {}).get("content", {}).get("application/json", {})
    if unprocessable.get("schema") == {"$ref": "#/components/schemas/HTTPValidationError"}:
        unprocessable["schema"] = {"$ref": "#/components/schemas/Unprocessable"}
    content: dict[str, Any] = {"application/json": _DETAIL}
    if path == "/fhir" or path.startswith("/fhir/"):
        content["application/fhir+json"] = _OPERATION_OUTCOME
    responses.setdefault("4XX", {"description": _CLIENT_ERRORS, "content": content})


def _with_security(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = _BEARER
    components.setdefault("schemas", {})["Unprocessable"] = _UNPROCESSABLE
    # FastAPI (0.16x) keeps an included router's routes behind a context of their own, with the
    # router's dependencies (``/metrics``'s role) in the effective route's dependant
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        needs_token, roles = operation_security(route)
        for method in route.methods or ():
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            _refine_errors(route.path_format or "", operation.setdefault("responses", {}))
            if not needs_token:
                operation["security"] = []
                continue
            # alternatives: any one of the roles (OpenAPI 3.1 lets an http scheme name roles)
            operation["security"] = [{SCHEME: [role.value]} for role in roles] or [{SCHEME: []}]
            responses = operation.setdefault("responses", {})
            for status, answer in _REFUSALS.items():
                responses.setdefault(status, answer)
    return schema


def install_docs(app: FastAPI) -> None:
    """Declare the security in ``app``'s OpenAPI document and serve ``GET /docs`` from it.

    Call it after every router is included (the document is built on first request, once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _with_security(app, schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """The API's reference as one HTML page, no script."""
        return HTMLResponse(render_docs(app.openapi()))


# -- the page ------------------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ info.title }} API {{ info.version }} · engine</title>
<link rel="stylesheet" href="/console/static/console.css">
</head>
<body>
<header class="top"><a class="brand" href="/console/">engine</a>
<nav><a href="/docs" class="active">API</a><a href="/openapi.json">openapi.json</a></nav>
</header>
<main class="api-docs">
<h1>{{ info.title }} API <small>{{ info.version }}</small></h1>
<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a> (OpenAPI
{{ openapi }}). Operations marked with a role take <code>Authorization: Bearer &lt;JWT&gt;</code>;
without a valid token they answer 401, without the role 403.</p>
{% for scheme_name, scheme in schemes.items() %}
<section class="api-scheme" id="security-{{ scheme_name }}">
<h2>Security: {{ scheme_name }}</h2>
<p>{{ scheme.type }} {{ scheme.scheme }}{% if scheme.bearerFormat %} ({{ scheme.bearerFormat }}){%
endif %}</p>
{% if scheme.description %}<p>{{ scheme.description }}</p>{% endif %}
</section>
{% endfor %}
<nav class="api-index"><h2>Operations</h2><ul>
{% for op in operations %}
<li><a href="#{{ op.anchor }}"><code>{{ op.method }} {{ op.path }}</code></a>
{% if op.summary %} — {{ op.summary }}{% endif %}</li>
{% endfor %}
</ul></nav>
{% for op in operations %}
<section class="api-operation" id="{{ op.anchor }}">
<h2><code>{{ op.method }} {{ op.path }}</code></h2>
{% if op.summary %}<p><strong>{{ op.summary }}</strong></p>{% endif %}
{% if op.description %}<pre class="api-description">{{ op.description }}</pre>{% endif %}
<p class="api-auth">{% if op.secured %}Needs a bearer token{% if op.roles %} with the role
{{ op.roles | join(", ") }} (or admin){% endif %}.{% else %}Open: no token needed.{% endif %}</p>
{% if op.parameters %}
<table class="api-parameters">
<thead><tr><th>Parameter</th><th>In</th><th>Type</th><th>Required</th><th>Limits</th></tr></thead>
<tbody>
{% for p in op.parameters %}
<tr><td><code>{{ p.name }}</code></td><td>{{ p.where }}</td><td>{{ p.type }}</td>
<td>{{ "yes" if p.required else "no" }}</td><td>{{ p.limits }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}
{% if op.body %}<p>Body: {% for media in op.body %}<code>{{ media }}</code>{% if not loop.last %},
{% endif %}{% endfor %}</p>{% endif %}
<table class="api-responses">
<thead><tr><th>Status</th><th>Meaning</th><th>Media types</th></tr></thead>
<tbody>
{% for r in op.responses %}
<tr><td>{{ r.status }}</td><td>{{ r.description }}</td><td>{{ r.media | join(", ") }}</td></tr>
{% endfor %}
</tbody>
</table>
</section>
{% endfor %}
</main>
<footer>engine {{ info.version }}</footer>
</body>
</html>
"""

_environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_template = _environment.from_string(_PAGE)

_LIMITS = (
    ("minimum", ">= {}"),
    ("maximum", "<= {}"),
    ("exclusiveMinimum", "> {}"),
    ("exclusiveMaximum", "< {}"),
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
    ("pattern", "matches {}"),
)


def _type_of(schema: dict[str, Any]) -> str:
    """A parameter's type in a few words (``integer``, ``string or null``, ``date-time``)."""
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    kind = str(schema.get("type", "any"))
    return f"{kind} ({schema['format']})" if "format" in schema else kind


def _limits_of(schema: dict[str, Any]) -> str:
    parts: list[str] = []
    for sub in [schema, *schema.get("anyOf", [])]:
        parts += [text.format(sub[key]) for key, text in _LIMITS if key in sub]
    if "default" in schema:
        parts.append(f"default {schema['default']}")
    return "; ".join(parts)


def _anchor(method: str, path: str) -> str:
    return f"{method}-" + "".join(c if c.isalnum() else "-" for c in path).strip("-")


def _operations(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path, item in document.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            security = op.get("security", [])
            roles = sorted({role for req in security for roles in req.values() for role in roles})
            body = op.get("requestBody", {}).get("content", {})
            yield {
                "method": method.upper(),
                "path": path,
                "anchor": _anchor(method, path),
                "summary": op.get("summary", ""),
                "description": op.get("description", ""),
                "secured": bool(security),
                "roles": roles,
                "parameters": [
                    {
                        "name": p.get("name", ""),
                        "where": p.get("in", ""),
                        "type": _type_of(p.get("schema", {})),
                        "required": bool(p.get("required")),
                        "limits": _limits_of(p.get("schema", {})),
                    }
                    for p in op.get("parameters", [])
                ],
                "body": sorted(body),
                "responses": [
                    {
                        "status": status,
                        "description": answer.get("description", ""),
                        "media": sorted(answer.get("content", {})),
                    }
                    for status, answer in sorted(op.get("responses", {}).items())
                ],
            }


def render_docs(document: dict[str, Any]) -> str:
    """The reference page for an OpenAPI document (every value escaped)."""
    return _template.render(
        info=document.get("info", {}),
        openapi=document.get("openapi", ""),
        schemes=document.get("components", {}).get("securitySchemes", {}),
        operations=list(_operations(document)),
    )
