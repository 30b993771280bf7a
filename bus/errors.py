"""The bus error tree. Transport errors (redis, sockets) never leave the bus raw."""

from __future__ import annotations

__all__ = [
    "BusClosed",
    "BusConfigError",
    "BusError",
    "BusProtocolError",
    "BusUnavailable",
    "Fenced",
]


class BusError(Exception):
    """Base class of every error the bus raises."""


class BusClosed(BusError):
    """The bus object was closed; no further calls are possible."""


class BusUnavailable(BusError):
    """The server cannot be reached right now (connection lost, server down, timeout).

    Retryable: back off and try again. Whether a write that raised this took effect is unknown,
    which is why a commit acks its input atomically (a resent commit of an entry no longer pending
    writes nothing) and consumers re-read their own pending entries.
    """


class BusProtocolError(BusError):
    """The server refused a command (wrong type, bad id, unsupported feature...). Not retryable."""


class BusConfigError(BusProtocolError):
    """The server refuses what the bus URL asks of every connection (a database number it does
    not have): no retry cures it; fix the URL."""


class Fenced(BusError):
    """A fenced commit found its ownership lease held by someone else (or expired): nothing was
    written or acked. The caller no longer owns what it was committing for."""
