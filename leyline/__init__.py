"""Leyline: Kasmina's wire schema (generated protobuf types; no logic)."""

from leyline import leyline_pb2 as pb

__all__ = ["pb"]
