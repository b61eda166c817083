"""The fault campaign (issue 14, ``make chaos``): a fixed load of HL7v2 messages sent to the
engine as ``make run`` runs it while processes are killed, destinations misbehave, the database
goes away and the disk fills up; then every ACKed message is looked for at the destinations.

chaos/load.py (the senders), processes.py (the engine and the stub FHIR server), proxy.py (a TCP
proxy the campaign controls), harness.py (one scenario's run), check.py (the verdict),
scenarios.py, infra.py and leader.py (the faults; leader.py: two nodes on one PostgreSQL, the
scheduler's leader killed mid eligibility runs), __main__.py (``python -m chaos``).
"""
