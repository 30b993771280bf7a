"""Envelope kinds: the one place their strings are written.

A kind names a Leyline message type on the wire (``contracts.registry`` maps each to its protobuf
type). Code elsewhere refers to these constants, never to the strings.
"""

from __future__ import annotations

SEED_COMMAND = "seed.command"
LIFECYCLE_TRANSITION = "lifecycle.transition"
LIFECYCLE_REFUSED = "lifecycle.refused"
LIFECYCLE_PROGRESS = "lifecycle.progress"
GATE_REQUEST = "gate.request"
GATE_RESULT = "gate.result"
EXEC_ORDER = "exec.order"
EXEC_ACK = "exec.ack"
STEP_REPORT = "step.report"
TELEMETRY_RAW = "telemetry.raw"
TELEMETRY_BATCH = "telemetry.batch"
TELEMETRY_REGION = "telemetry.region"
TELEMETRY_GLOBAL = "telemetry.global"
TELEMETRY_CRITICAL = "telemetry.critical"
SAFETY_SIGNAL = "safety.signal"
SAFETY_VERDICT = "safety.verdict"
CHECKPOINT_REQUEST = "checkpoint.request"
BARRIER_VOTE = "barrier.vote"
BARRIER_COMMIT = "barrier.commit"
BARRIER_BYZANTINE = "barrier.byzantine"
BARRIER_TIMEOUT = "barrier.timeout"
BARRIER_PROPOSE = "barrier.propose"
BARRIER_TICK = "barrier.tick"
REJECTION = "rejection"
STATE_DIGEST = "state.digest"
HEARTBEAT = "actor.heartbeat"
COMMAND_OUTCOME = "command.outcome"
PRUNING_IMPORTANCE = "pruning.importance"
PRUNING_ORDER = "pruning.order"
PRUNING_ACK = "pruning.ack"

#: the events of one slot's lifecycle (the SeedActor's own)
LIFECYCLE_EVENTS = frozenset({LIFECYCLE_TRANSITION, LIFECYCLE_REFUSED, LIFECYCLE_PROGRESS})
