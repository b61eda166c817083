"""FHIR R4 → HL7v2 v2.5.1: the same segment and datatype maps as inbound, run in reverse.

One mapping, two directions: each rule that moves an HL7 element to a FHIR element is read back,
from the FHIR element to the HL7 element (rules with ``direction: in`` are skipped). For a rule:

* the FHIR value(s) at ``fhir`` are read; a list gives one HL7 repetition per element;
* ``wrap`` is undone: the element must fit the template, whose constants must match (an identifier
  wrap with type SS takes only identifiers of type SS), and what is at ``$value`` is written;
* ``type`` writes the value with the datatype map, recursively, into components and subcomponents;
  ``table`` writes the HL7 code (the outbound file's ``reverse``, the table's ``reverse``, the
  inverted ``map`` where the first HL7 code of a FHIR code wins, then ``reverse_default``), from
  the coding of a Coding or CodeableConcept whose system is the table's; ``transform`` writes what
  its outbound function gives; ``resource`` follows the reference into the input and writes that
  resource (PV1-7 from the Practitioner); ``build`` writes one element with another map of the
  same segment;
* a ``value`` rule is an inbound default and writes nothing, unless its ``when`` names codes: then
  an element equal to the constant writes the first of them (DG1-15 ``1`` for a principal
  diagnosis), the condition read backwards.

Who gets what. A list element goes to the first rule that takes it, and only to that one (PID-3,
PID-2, PID-4, PID-18 and PID-19 all read ``identifier[]``); rules whose ``wrap`` holds constants
are offered elements first, and an element that fits a wrap exactly (nothing in it the wrap would
drop) before one that fits loosely: an SSN read from PID-19 goes back to PID-19, one read from
PID-3 (with the display the identifier-type table gave it) back to PID-3, so a round trip keeps
the order. A single value goes to every rule that takes it (inbound, the first of those HL7
elements sets it, so they must agree). A rule naming a more specific path is offered its elements
before the rule naming the whole (``productOrService.coding[]`` before ``productOrService``). What
an element already wrote in the segment group (IN1-36) is not written again (IN2-61).

What fits where comes from HL7 v2.5.1 itself (hl7apy's reference data, chapter 2.5.3 and 2A): a
field that does not repeat takes one element, and a component the field's datatype lacks (CWE-9 in
a CE field) is not written. Two rules writing one place must agree, except that a code already
there that reads back as the same FHIR code stands (XTN-3 CP is a phone); a datatype or build value
with a part that disagrees is not written at all, so two practitioners' names are never merged.

``when`` conditions name HL7 siblings, so they are checked on what is written: rules without a
condition first, then the conditioned ones (an XTN value goes to component 4 when component 3 is
Internet, else to component 1); a sibling not written yet counts as what the map would write there.
A condition on an element no rule of the map writes is made true by writing its first listed
value (SCH-10 ``min`` for SCH-9 in minutes).

Which segments a message has, in which order and from which resources is data too:
:mod:`engine.mappings.outbound_spec` (``specs/outbound/*.yaml``).

References (FHIR R4 §2.3.0) resolve inside the input by fullUrl, ``Type/id``, ``#id`` or, for a
logical reference, the identifier. One to a resource outside the input does not stop the message:
a stand-in is made from what the reference carries (its identifier, else the id of ``Type/id``;
its display as the name), for a selection marked ``stand_in`` and for a ``resource`` rule when the
reference names the rule's type; a warning says so.

Warnings (``to_hl7(..., warnings=[])``), one line per kind of element, each naming the FHIR
element: the list elements no segment took, one line per list (``Coverage.class[1] (type
subgroup), [3] (type rxgroup): no place for them in IN1``), a code no table rule could write or
one written only approximately (name use ``old`` is U in v2.5.1), a stand-in, a required field
sent as the HL7 null ``""``. They are collected in the slots' layers, so what a rule tried and did
not write says nothing.

The modules, in the order a message is written:

* :mod:`.mapper`: :class:`OutboundMapper`, which checks the outbound files at start-up and writes
  one message per :meth:`~OutboundMapper.to_hl7` call;
* :mod:`.select`: which resources of the input feed which segments (the outbound file's
  selections), and what stops a message before anything is written;
* :mod:`.plan`: what to write, the segment and datatype maps compiled in reverse into rules
  grouped by the FHIR element they read (with reverse code tables and ``when`` conditions);
* :mod:`.apply`: writing, a plan applied to a resource (who gets what), and a segment step
  finished (defaults, requirements) and added to the message;
* :mod:`.slots`: where values go, the segment's leaves in trial layers, and what HL7 v2.5.1 lets
  each field hold;
* :mod:`.fhir`: reading the input, values at paths, wraps undone, references and stand-ins;
* :mod:`.run`: one conversion's running state and its warnings.

Incomplete: the maps have no HL7 place for a third given name or address line, which are dropped
without a warning, nor for HumanName.text beside a family name; elements below a list element
(``name[0].text``) are not checked for a place; one HL7 version (2.5.1) is written.
"""

from engine.mappings.outbound.mapper import OutboundMapper

__all__ = ["OutboundMapper"]
