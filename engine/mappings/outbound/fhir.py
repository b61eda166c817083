"""Reading the FHIR input of an outbound conversion: values at paths, wraps undone, references.

A rule names a FHIR element by a dotted path (``name.given``); :func:`values_at` reads every value
there, :func:`items_at` the elements a rule is offered (each with a key that says whether it is a
list element, so that one is given to one rule only). A ``wrap`` read backwards is a template to
match (:func:`unwrap`). :class:`Index` holds the input's resources and resolves references
between them (FHIR R4 §3.1.0.11.2), making stand-ins for references to resources outside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "TAIL_RE",
    "Index",
    "Item",
    "has_constants",
    "items_at",
    "match",
    "names_type",
    "ref_label",
    "ref_objs",
    "refs_at",
    "shown",
    "text_of",
    "unwrap",
    "values_at",
    "what",
]

#: the ``Type/id`` at the end of a reference or fullUrl (a ``/_history/n`` after it is ignored)
TAIL_RE = re.compile(r"([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")

#: resources whose name is a list of HumanName
_PERSONS = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})

#: an element offered to rules: (owner id, key, index) for "given once only", and the value
Item = tuple[tuple[int, str, int], Any]


def values_at(obj: Any, path: str) -> list[Any]:
    """Every value at a dotted path, through lists at any step."""
    cur = [obj]
    for step in path.split("."):
        step = step.removesuffix("[]")
        nxt: list[Any] = []
        for o in cur:
            for item in o if isinstance(o, list) else [o]:
                if isinstance(item, dict) and step in item:
                    v = item[step]
                    nxt.extend(v if isinstance(v, list) else [v])
        cur = nxt
    return [v for v in cur if v is not None and v != ""]


def items_at(obj: Any, steps: tuple[str, ...]) -> list[Item]:
    """The elements at a path (first element of a list at each step but the last), keyed by
    their holder, the last step and their index in a list (-1 for a single value)."""
    cur: Any = obj
    for step in steps[:-1]:
        if isinstance(cur, list):
            cur = cur[0] if cur else None
        if not isinstance(cur, dict):
            return []
        cur = cur.get(step)
    if isinstance(cur, list):
        cur = cur[0] if cur else None
    if not isinstance(cur, dict):
        return []
    last = steps[-1]
    v = cur.get(last)
    if v is None or v == "" or v == [] or v == {}:
        return []
    if isinstance(v, list):
        return [((id(cur), last, i), e) for i, e in enumerate(v) if e not in (None, "", {}, [])]
    return [((id(cur), last, -1), v)]


def text_of(value: Any) -> str | None:
    """A FHIR primitive as HL7 text (a boolean as ``true``/``false``); None for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        text = str(value)
        return text or None
    return None


# -- wraps read backwards ------------------------------------------------------------------------


def _holds_value(template: Any) -> bool:
    if isinstance(template, str):
        return template == "$value"
    if isinstance(template, dict):
        return any(_holds_value(v) for v in template.values())
    if isinstance(template, list):
        return any(_holds_value(v) for v in template)
    return False


def has_constants(template: Any) -> bool:
    """Does a ``wrap`` template hold a constant (an identifier type) beside ``$value``?"""
    if isinstance(template, str):
        return not template.startswith("$")
    if isinstance(template, dict):
        return any(has_constants(v) for v in template.values())
    if isinstance(template, list):
        return any(has_constants(v) for v in template)
    return True


def match(t: Any, v: Any, strict: bool, found: list[Any]) -> bool:
    """Does ``v`` fit template ``t`` (see :func:`unwrap`); what is at ``$value`` goes to
    ``found``."""
    if isinstance(t, str) and t.startswith("$"):
        if t == "$value":
            found.append(v)
        return True
    if isinstance(t, dict):
        if not isinstance(v, dict):
            return False
        for k, tv in t.items():
            if k not in v:
                if strict and k != "display" and not _holds_value(tv):
                    return False
                continue
            if not match(tv, v[k], strict, found):
                return False
        return not (strict and any(k not in t for k in v))
    if isinstance(t, list):
        if not isinstance(v, list):
            return False
        for ti in t:
            for vi in v:
                got: list[Any] = []
                if match(ti, vi, strict, got):
                    found.extend(got)
                    break
            else:
                return False
        return not strict or all(any(match(ti, vi, True, []) for ti in t) for vi in v)
    return bool(t == v)


def unwrap(template: Any, value: Any, strict: bool) -> tuple[bool, Any]:
    """Undo a ``wrap``: does ``value`` fit the template, and what is at ``$value``.

    Strict: the value is the template filled in, nothing more (a missing ``display`` aside): an
    identifier with a display in its type does not fit a wrap without one, which would drop it.
    Loose: the constants the value has match the template's."""
    found: list[Any] = []
    ok = match(template, value, strict, found)
    return (ok and bool(found)), (found[0] if found else None)


# -- how warnings name things --------------------------------------------------------------------


def shown(value: Any) -> str:
    """A FHIR code, Coding or CodeableConcept as a warning shows it: its code(s), quoted."""
    if isinstance(value, dict):
        got = value.get("coding")
        codings: list[Any] = got if isinstance(got, list) else [value]
        codes = [
            str(c["code"])
            for c in codings
            if isinstance(c, dict) and isinstance(c.get("code"), str)
        ]
        if codes:
            return "/".join(repr(c) for c in codes)
        return repr(value["text"]) if isinstance(value.get("text"), str) else ""
    text = text_of(value)
    return repr(text) if text else ""


def what(value: dict[str, Any]) -> str:
    """`` (type rxgroup)``: what tells one element of a list from another, for a warning."""
    for path in ("type.coding.code", "type.text", "use", "system", "code.coding.code"):
        got = [v for v in values_at(value, path) if isinstance(v, str)]
        if got:
            return f" ({path.split('.', 1)[0]} {got[0]})"
    return ""


def ref_label(ref: Any) -> str:
    """How a warning names a reference: its literal reference, else its identifier or display."""
    if not isinstance(ref, dict):
        return "?"
    if isinstance(ref.get("reference"), str):
        return str(ref["reference"])
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        return f"identifier {ident.get('system') or ''}|{ident['value']}"
    return f"display {ref.get('display')!r}" if ref.get("display") else "no reference"


# -- references ----------------------------------------------------------------------------------


def names_type(ref: Any) -> str | None:
    """The resource type a Reference names (its ``type``, else its ``Type/id``), if any."""
    if not isinstance(ref, dict):
        return None
    if isinstance(ref.get("type"), str):
        return str(ref["type"])
    literal = ref.get("reference")
    m = TAIL_RE.search(literal) if isinstance(literal, str) else None
    return m.group(1).split("/", 1)[0] if m else None


def refs_at(res: Any, path: str) -> list[str]:
    """The reference strings at a path (``payor``, ``participant.actor``)."""
    out = []
    for v in values_at(res, path):
        if isinstance(v, dict) and isinstance(v.get("reference"), str):
            out.append(v["reference"])
    return out


def ref_objs(res: Any, path: str) -> list[tuple[Any, dict[str, Any]]]:
    """The References at a path, each with the element of the path's first step that holds it
    (the ``participant`` of ``participant.actor``): literal or logical (identifier) ones."""
    first, _, rest = path.partition(".")
    out: list[tuple[Any, dict[str, Any]]] = []
    for holder in values_at(res, first):
        for v in values_at(holder, rest) if rest else [holder]:
            if isinstance(v, dict) and (
                isinstance(v.get("reference"), str) or isinstance(v.get("identifier"), dict)
            ):
                out.append((holder, v))
    return out


def _logical_key(ref: dict[str, Any]) -> str:
    ident = ref.get("identifier") or {}
    return f"identifier|{ref.get('type') or ''}|{ident.get('system') or ''}|{ident.get('value')}"


def _entries(data: Mapping[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """The input's resources with their fullUrls: a Bundle's entries, or the one resource."""
    if data.get("resourceType") != "Bundle":
        return [(None, dict(data))]
    entries: list[tuple[str | None, dict[str, Any]]] = []
    for entry in data.get("entry") or []:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(res, dict) and isinstance(res.get("resourceType"), str):
            entries.append((entry.get("fullUrl"), res))
    return entries


class Index:
    """The input's resources and how references find them (FHIR R4 §3.1.0.11.2: by fullUrl, by
    ``Type/id``, or ``#id`` for contained resources; a logical reference, FHIR R4 §2.3.0.3, by
    the identifier of a resource of its type), and the stand-ins made for references to
    resources outside the input (:meth:`stand_in`)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        entries = _entries(data)
        self.resources = [r for _, r in entries]
        self._by: dict[str, dict[str, Any]] = {}
        for url, res in entries:
            keys: list[str] = []
            if isinstance(url, str) and url:
                keys.append(url)
                m = TAIL_RE.search(url)
                if m:
                    keys.append(m.group(1))
            rid = res.get("id")
            if isinstance(rid, str) and rid:
                keys.append(f"{res['resourceType']}/{rid}")
            for k in keys:
                self._by.setdefault(k, res)
            for c in res.get("contained") or []:
                if isinstance(c, dict) and isinstance(c.get("id"), str):
                    self._by.setdefault("#" + c["id"], c)
        self._by_identifier: dict[tuple[str, str, str], dict[str, Any]] = {}
        for res in self.resources:
            for ident in res.get("identifier") or []:
                if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    key = (res["resourceType"], str(ident.get("system") or ""), ident["value"])
                    self._by_identifier.setdefault(key, res)
        self._stand_ins: dict[str, dict[str, Any]] = {}
        self._made: dict[str, str] = {}
        self._urls = {id(res): url for url, res in entries if isinstance(url, str)}

    def own_id(self, res: dict[str, Any]) -> str | None:
        """A resource's id: Resource.id, else the tail of its fullUrl (``urn:uuid:…``)."""
        rid = res.get("id")
        if isinstance(rid, str) and rid:
            return rid
        url = self._urls.get(id(res), "")
        tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        return tail or None

    def resolve(self, ref: Any) -> dict[str, Any] | None:
        """A reference string to the resource it points to in the input (or its stand-in)."""
        if not isinstance(ref, str) or not ref:
            return None
        got = self._by.get(ref)
        if got is None:
            m = TAIL_RE.search(ref)
            if m:
                got = self._by.get(m.group(1))
        return got if got is not None else self._stand_ins.get(ref)

    def resolve_ref(self, ref: Any) -> dict[str, Any] | None:
        """A Reference (dict) to what it points to in the input, or to its stand-in: by its
        ``reference``, else (a logical reference) by its identifier, among resources of its
        ``type`` when it has one."""
        if not isinstance(ref, dict):
            return None
        literal = ref.get("reference")
        if isinstance(literal, str) and literal:
            return self.resolve(literal)
        ident = ref.get("identifier")
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            return None
        system, value = str(ident.get("system") or ""), ident["value"]
        rtype = ref.get("type")
        for (t, sys_, val), res in self._by_identifier.items():
            if sys_ == system and val == value and (not rtype or t == rtype):
                return res
        return self._stand_ins.get(_logical_key(ref))

    def stand_in(
        self, ref: Any, rtype: str, *, presume: bool = True
    ) -> tuple[dict[str, Any], str] | None:
        """A resource of type ``rtype`` made from a Reference to a resource outside the input,
        and what it was made from (for the warning); None when the reference names another
        type, names none and ``presume`` is false, or carries nothing to write. The same
        reference gives the same stand-in."""
        if not isinstance(ref, dict):
            return None
        literal = ref.get("reference") if isinstance(ref.get("reference"), str) else None
        m = TAIL_RE.search(literal) if literal else None
        named = ref.get("type") or (m.group(1).split("/", 1)[0] if m else None)
        if named is not None and named != rtype:
            return None
        if named is None and (literal is not None or not presume):
            return None  # a urn:uuid:, a fragment, or a logical reference of unknown type
        key = literal or _logical_key(ref)
        known = self._stand_ins.get(key)
        if known is not None:
            return known, self._made[key]
        res: dict[str, Any] = {"resourceType": rtype}
        said: list[str] = []
        ident = ref.get("identifier")
        if isinstance(ident, dict) and ident.get("value"):
            res["identifier"] = [ident]
            said.append("its identifier")
        elif m is not None:
            res["identifier"] = [{"value": m.group(1).split("/", 1)[1]}]
            said.append("its id as the identifier")
        display = ref.get("display")
        if isinstance(display, str) and display.strip():
            res["name"] = [{"family": display}] if rtype in _PERSONS else display
            said.append("its display as the name")
        if not said:
            return None
        self._made[key] = " and ".join(said)
        self._stand_ins[key] = res
        return res, self._made[key]
