"""Integration routes (not HTTP routes): which messages go to which destinations, as YAML data.

``spec`` holds the route file models, ``loader`` reads the built-in and site files (the engine
through ``engine.adapters.registry.load_routes``, which checks each destination with its
adapter), ``router`` matches a message against them. The core: no web, database or adapter
imports.
"""

from engine.routes.loader import RouteSet, read_routes
from engine.routes.router import Router
from engine.routes.spec import DestinationSpec, Route

__all__ = ["DestinationSpec", "Route", "RouteSet", "Router", "read_routes"]
