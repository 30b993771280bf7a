"""Actors: pure cores (lifecycle, gates, breakers, aggregation, barrier) and their bus shells."""
