"""Names of the evidence metrics gates read (``Evidence.metrics`` keys).

Execution measures them, the SeedActor forwards them in a GateRequest, the GateActor judges them.
Booleans are encoded as 1.0 (true) / 0.0 (false). A metric that is absent fails its check.
"""

from __future__ import annotations

# G0 sanity (execution measures a probe seed built off the forward; the SeedActor adds slot facts)
BLUEPRINT_KNOWN = "blueprint_known"
BLUEPRINT_SIGNED_OFF = "blueprint_signed_off"
SLOT_FREE = "slot_free"
SLOT_EMBARGOED = "slot_embargoed"
PARAMS_FINITE = "params_finite"
SHAPE_MATCH = "shape_match"
DTYPE_MATCH = "dtype_match"
GERMINATION_MAX_ABS_DELTA = "germination_max_abs_delta"
SEED_PARAMS = "seed_params"
SEED_MEMORY_BYTES = "seed_memory_bytes"
SEED_SHARES_HOST = "seed_shares_host"  # modules/tensors the seed holds of the host
SEED_WRITES_INPUT = "seed_writes_input"  # 1 when the seed writes its input in place
ARTIFACT_VERIFIED = "artifact_verified"  # germination by artifact id: signature and checksum hold

# G1 gradient health (cumulative over the TRAINING stage)
TRAINING_STEPS = "training_steps"
GRAD_NORM_MIN = "grad_norm_min"
GRAD_NORM_MAX = "grad_norm_max"
GRAD_FINITE = "grad_finite"
ISOLATION_VIOLATIONS = "isolation_violations"
SEED_LOSS_INITIAL = "seed_loss_initial"  # informational: shadow loss at the first probe
SEED_LOSS_FINAL = "seed_loss_final"  # informational: shadow loss at the latest probe
# the seed's own contribution: paired loss difference (alpha = 0 minus seed on) on the same
# examples, pooled over the second half of the TRAINING measurements (see docs/gates.md)
SEED_LOSS_GAIN = "seed_loss_gain"  # mean of the paired differences (> 0: the seed lowers the loss)
SEED_LOSS_GAIN_SE = "seed_loss_gain_se"  # its standard error
SEED_LOSS_GAIN_N = "seed_loss_gain_n"  # number of paired differences behind it

# G2 stability (over the BLENDING stage)
ALPHA = "alpha"
LOSS_SPIKE_SIGMA = "loss_spike_sigma"  # how far the loss rose in the stage, in standard errors
LOSS_SPIKE_N = "loss_spike_n"  # training losses of the stage behind it
NONFINITE_COUNT = "nonfinite_count"

# G3 interface (SHADOWING; cf_* are counterfactual validation measurements)
OUTPUT_FINITE = "output_finite"
SEED_HOST_NORM_RATIO = "seed_host_norm_ratio"
SEED_HOST_NORM_N = "seed_host_norm_n"  # examples of the probe batch behind the ratio
LATENCY_OVERHEAD = "latency_overhead"
LATENCY_ADDED_US = "latency_added_us"  # t_on - t_off behind it, in µs per probe forward
LATENCY_N = "latency_n"  # timed pairs of forwards (seed on, seed off) behind it
CF_LOSS_ON = "cf_loss_on"  # validation loss at alpha = 1
CF_LOSS_OFF = "cf_loss_off"  # validation loss at alpha = 0
# the losses behind both means: examples (batches for a batch-mean loss); absent when the
# trainer's own evaluate measured them
CF_LOSS_N = "cf_loss_n"

# G4 system impact (PROBATIONARY)
CF_ACC_ON = "cf_acc_on"
CF_ACC_OFF = "cf_acc_off"
BASELINE_ACC = "baseline_acc"  # validation accuracy before germination
VAL_ACC = "val_acc"
# non-class targets: validation loss of the host at germination, and now with the seed on
BASELINE_LOSS = "baseline_loss"
VAL_LOSS = "val_loss"
OPEN_STRIKES = "open_strikes"
# paired per-example gain on the validation set, alpha = 1 vs alpha = 0 (see docs/gates.md)
CF_GAIN = "cf_gain"  # mean per-example gain: accuracy for class targets, else loss decrease
CF_GAIN_SE = "cf_gain_se"  # its standard error
CF_GAIN_N = "cf_gain_n"  # validation examples behind it (pairs: batches for a batch-mean loss)
CF_GAIN_FIXES = "cf_gain_fixes"  # class targets: examples right with the seed, wrong without
CF_GAIN_BREAKS = "cf_gain_breaks"  # class targets: examples wrong with the seed, right without
CF_GAIN_ON_LOSS = "cf_gain_on_loss"  # 1.0 when the gain is a loss decrease (non-class targets)
# non-class targets: the seed-off arm's mean paired loss; G4 judges cf_gain as a fraction of it
CF_GAIN_BASE = "cf_gain_base"
HOST_PARAMS = "host_params"  # parameters of the host (seeds excluded), measured at germination

# G5 reset
MODULE_RELEASED = "module_released"
HOOKS_RELEASED = "hooks_released"
OPTIMIZER_RELEASED = "optimizer_released"
RESET_MAX_ABS_DELTA = "reset_max_abs_delta"

ALL = tuple(
    value for name, value in sorted(globals().items()) if name.isupper() and isinstance(value, str)
)

# G0 seed memory budget (bytes; see docs/operations.md "Memory management")
SEED_MEMORY_BUDGET = "seed_memory_budget"  # the rank's seed memory budget (0: no budget)
SEED_MEMORY_IN_USE = "seed_memory_in_use"  # what the rank's live and held seeds use now
SEED_MEMORY_REQUEST = "seed_memory_request"  # what the new seed will use (estimate)
SEED_OOM = "seed_oom"  # 1 when germination ran out of memory
