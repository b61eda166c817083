"""Integration routes (not HTTP routes): which messages go to which destinations, as YAML data.

``spec`` holds the route file models, ``loader`` reads the built-in and site files, ``router``
matches a message against them. The core: no web, database or adapter imports.
"""

from engine.routes.loader import RouteSet, load_routes
from engine.routes.router import Router
from engine.routes.spec import DestinationSpec, Route

__all__ = ["DestinationSpec", "Route", "RouteSet", "Router", "load_routes"]
