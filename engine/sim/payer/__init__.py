"""The stub payer: answers X12 270 eligibility inquiries with 271s about synthetic members.

:mod:`.roster` reads the members (YAML, ``specs/roster.yaml`` built in); :mod:`.answers` decides
what the roster says about one inquiry; :mod:`.x271` writes it as a 271 (or a TA1/999 for a 270
it cannot read); :mod:`.stub` is the :class:`~engine.adapters.payer.contract.PayerAdapter`
answering in-process (the ``stub`` kind of payer files, built by
:mod:`engine.adapters.payer.registry`); :mod:`.http_server` serves it over HTTP in the CAQH CORE
real-time style, for the ``x12-http`` adapter's tests and ``engine payer-stub``.
"""
