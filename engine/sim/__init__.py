"""Simulators: stand-ins for the systems the engine talks to, for ``make run``, demos and tests.

None of this is on the engine's path to a real peer; each simulator speaks the real protocol
over real HTTP (or in-process) so the engine's own adapters can be run against it:

* :mod:`.fhir_server`: a stub FHIR R4 server, in memory (``engine stub-fhir``; ``make run``
  delivers the example routes to it);
* :mod:`.payer`: a stub payer answering 270s with 271s from a synthetic roster, in-process (the
  ``stub`` adapter kind of payer files, the default of ``make run``) or over HTTP in the CAQH
  CORE real-time style (``engine payer-stub``);
* :mod:`.epic` (with :mod:`.epic_fhir`) and :mod:`.athena`: stub EHRs that enforce their
  vendors' rules (``engine stub-epic``, ``engine stub-athena``; ``make run`` starts both);
* :mod:`.demo`: synthetic patients and appointments sent to a running engine, and their scanned
  documents dropped in the watched folder and uploaded (``engine demo``);
* :mod:`.pdf`: synthetic scanned documents (one-page PDFs, any size) for the demo and the benches;
* :mod:`.server_thread`: any of these apps on a free port in a thread, for tests.

Only synthetic people live in this package.
"""
