"""Alerts (issue 13): rules in ``alerts.yaml`` beside the route files, evaluated against the store
on the worker's schedule, notices by e-mail (SMTP) and webhooks (Slack/Teams ``text`` JSON).

=================  ===================================================================
``rules.py``       ``alerts.yaml``: the rules and channels, validated at load (file, line, key)
``evaluate.py``    each kind of rule against the store, the disk and the database
``channels.py``    SMTP and webhook channels, and the notices' text (no PHI)
``state.py``       raised and recovered alerts in the database: one notice per transition,
                   decided by conditional updates (several worker processes may evaluate);
                   ``active_alerts()`` for the dashboard
``gauge.py``       ``engine_alerts_active{rule}`` on ``/metrics``, read at each scrape
=================  ===================================================================

The scheduled evaluation is :mod:`engine.jobs.alerts`; ``engine alerts`` is engine/cli_alerts.py.
"""
