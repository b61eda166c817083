"""The audit trail beyond its table (issue 13): the hash chain's rules and the FHIR export.

=================  ==========================================================================
``chain.py``       the canonical encoding of a record, its HMAC, and the walk that checks a
                   chain (pure: no database), used by the store and ``engine audit verify``
``key.py``         the audit key: the file (32 bytes, 0600, outside the database) whose
                   HMAC-SHA256 hashes the records, and the key id a record names it by
``export.py``      records as FHIR R4 AuditEvent resources shaped as IHE BALP describes
=================  ==========================================================================

The table, the appends under the chain's lock, pruning and the queries live in
:mod:`engine.store.audit`.
"""
