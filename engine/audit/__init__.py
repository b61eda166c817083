"""The audit trail beyond its table (issue 13): the hash chain's rules and the FHIR export.

=================  ==========================================================================
``chain.py``       the canonical encoding of a record, its SHA-256, and the walk that checks a
                   chain (pure: no database), used by the store and ``engine audit verify``
``export.py``      records as FHIR R4 AuditEvent resources shaped as IHE BALP describes
=================  ==========================================================================

The table, the appends under the chain's lock, pruning and the queries live in
:mod:`engine.store.audit`.
"""
