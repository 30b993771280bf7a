"""The TelemetryActor as its hosts see it: what it accepts, and what replay folds of its output.

Its live decisions come from the rate-limited :class:`~actors.telemetry.TelemetryAggregator`
(wall-clock token buckets, not replayed), so the spec has no ``decide``; replay folds the
summaries and critical events into :mod:`actors.telemetry.counters`.
"""

from __future__ import annotations

from actors.core import CoreSpec
from actors.telemetry import counters
from contracts import kinds

SPEC: CoreSpec[counters.TelemetryCounters] = CoreSpec(
    actor="telemetry",
    accepts=frozenset({kinds.TELEMETRY_RAW, kinds.TELEMETRY_BATCH}),
    own_events=frozenset(
        {kinds.TELEMETRY_REGION, kinds.TELEMETRY_GLOBAL, kinds.TELEMETRY_CRITICAL}
    ),
    initial=lambda _key: counters.initial_state(),
    decide=None,
    evolve=counters.evolve,
    digest=counters.digest,
)
