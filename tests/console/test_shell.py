"""The console's shell: ``/`` sends a browser to the console, its static files are served, and
its pages are not shown to someone not logged in."""

from __future__ import annotations

from tests.api.conftest import TestClient


def test_root_sends_a_browser_to_the_console(client: TestClient) -> None:
    answer = client.get("/", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/"


def test_static_files_are_served_by_the_engine(client: TestClient) -> None:
    css = client.get("/console/static/console.css")
    assert css.status_code == 200
    assert "text/css" in css.headers["content-type"]
    js = client.get("/console/static/console.js")
    assert js.status_code == 200
    assert client.get("/console/static/../../settings.py").status_code == 404
