"""Kasmina's composition root: wiring (actors, bus, keys) and the ``kasmina`` CLI."""

__version__ = "0.1.0"
