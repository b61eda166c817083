"""The console: web pages for IT admins and the front desk, served by ``engine serve`` under
``/console`` on the API's port (issue 13). Rendered on the server (Jinja2, autoescaped); our own
CSS and one script file under ``static/``, no inline script (the CSP forbids it), no CDN.

Layout (one owner per module):

=====================  ======================================================================
``auth.py``            who is logged in: :class:`ConsoleUser`, the dependencies pages take
                       (``ConsoleUserDep``, ``require_console``), the CSRF check
``sessions.py``        server-side sessions (signed cookie with the session id), idle log-off
``render.py``          the Jinja2 environment and ``render()``
``router.py``          ``/console``: every page module's router, and ``/console/static``
``refused.py``         the 403 page: a browser lacking a page's role is told which it needs
``pages_auth.py``      login, logout, OpenID Connect callback
``pages_users.py``     users (admin)
``pages_audit.py``     the audit trail (admin)
``pages_dashboard.py`` per route and destination figures, ingest rate, alerts, eligibility
``pages_routes.py``    loaded routes and mappings, reload
``pages_messages.py``  message search, one message (ER7 named, FHIR, ACK, deliveries, actions)
``pages_workbench.py`` mapping workbench
``pages_documents.py`` upload, documents waiting for a patient, match
``pages_worklist.py``  the front desk's eligibility worklist
``pages_reports.py``   reports (server-side SVG charts, CSV)
``pages_alerts.py``    alert rules and the alerts raised
=====================  ======================================================================
"""
