#!/usr/bin/env bash
# Mutation score of the pure cores and the envelope (a developer tool and a benchmark, not CI).
#
#   scripts/mutation.sh                       # every module below, one after the other
#   scripts/mutation.sh actors/seed/core.py   # one module
#   MUTATION_ONLY='*x_decide*' scripts/mutation.sh actors/seed/core.py   # some functions' mutants
#   MUTATION_TESTS='tests/a.py tests/b.py' scripts/mutation.sh actors/shell.py  # another selection
#
# Each module runs in its own throwaway copy of the tree with its own test selection, niced, one
# test process at a time (MUTATION_JOBS to change); the table is printed at the end and written
# to MUTATION_OUT (default mutation-table.md) with every survivor's diff. Survivors are re-run in
# a fresh process first (MUTATION_RECHECK=0 to skip; see scripts/mutation_table.py).
# Needs mutmut 3.8 (`pip install mutmut==3.8.1`).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
MUTMUT="${MUTMUT:-$(dirname "$PY")/mutmut}"
JOBS="${MUTATION_JOBS:-1}"
WORK="${MUTATION_WORK:-$(mktemp -d /tmp/kasmina-mutation.XXXXXX)}"
OUT="${MUTATION_OUT:-$ROOT/mutation-table.md}"

# module -> the example tests that pin it (space separated). mutmut 3.8 records which tests call
# each function (one stats run) and runs only those on that function's mutants, stopping at the
# first failure; a survivor runs all of them, so the selection is what a survivor costs. It is
# kept to the fast example tests of each module (no Redis restarts, no CLI, no benchmarks).
SEED="tests/actors/test_cores_seed_commands.py tests/actors/test_cores_seed_table.py \
tests/actors/test_cores_seed_walks.py tests/actors/test_cores_seed_pins.py \
tests/actors/test_cores_seed_gating.py tests/actors/test_cores_seed_params.py \
tests/actors/test_cores_seed_pending.py tests/actors/test_cores_seed_resend.py \
tests/actors/test_seed_wait.py"
ENVELOPE="tests/contracts/test_envelope.py tests/contracts/test_envelope_limits.py \
tests/contracts/test_envelope_shape.py tests/contracts/test_verifier_claims.py \
tests/contracts/test_wire_vectors.py"
declare -A TESTS=(
  [actors/seed/lifecycle.py]="tests/actors tests/contract/test_lifecycle.py"
  [actors/seed/core.py]="$SEED"
  [actors/seed/replies.py]="$SEED"
  [actors/seed/moves.py]="$SEED"
  [actors/gates/checks.py]="tests/actors"
  [contracts/envelope.py]="$ENVELOPE"
  [contracts/verifier.py]="$ENVELOPE"
  [actors/hosting/admission.py]="tests/actors/test_admission_rules.py tests/system/test_admission.py"
  [actors/eventlog.py]="tests/system/test_eventlog.py tests/system/test_outcomes.py \
tests/system/test_core_reasons.py tests/system/test_log_tamper.py"
  [actors/hosting/lifecycle.py]="tests/actors/test_host_lifecycle.py tests/system/test_ownership.py"
  [actors/hosting/lease.py]="tests/system/test_lease.py tests/system/test_ownership.py"
  [actors/hosting/logic.py]="tests/system/test_core_reasons.py"
  [actors/hosting/routing.py]="tests/system/test_routing.py tests/system/test_log_tamper.py \
tests/system/test_client_publish.py tests/system/test_barrier_consensus.py"
  [actors/hosting/inbox.py]="tests/actors/test_finite.py tests/actors/test_verify_entries.py \
tests/actors/test_admission_rules.py tests/system/test_hostile_input.py tests/system/test_core_reasons.py"
  [actors/hosting/rejection.py]="tests/actors/test_rejections.py tests/actors/test_admission_rules.py \
tests/system/test_core_reasons.py tests/system/test_storm_metrics.py tests/system/test_admission.py"
  [actors/hosting/housekeeping.py]="tests/system/test_housekeeping.py \
tests/system/test_barrier_consensus.py tests/system/test_retention_keys.py tests/system/test_ownership.py"
  [actors/hosting/serving.py]="tests/system/test_serving.py tests/system/test_ownership.py \
tests/system/test_log_tamper.py"
  [actors/shell.py]="tests/system/test_shell_checks.py tests/system/test_core_reasons.py tests/system/test_log_tamper.py \
tests/system/test_ownership.py tests/system/test_hostile_input.py"
)
# The property tests (hypothesis, hundreds of examples each) take minutes per surviving mutant on
# a small machine; they are left out unless MUTATION_PROPERTY_TESTS=1, so the score is what the
# example tests alone pin (a lower bound of the whole suite's).
SKIP_PROPS="not test_cores_seed_props and not test_cores_replay and not test_random"
SKIP_ENVELOPE_PROPS="not test_arbitrary_bytes and not test_mutated_valid_envelopes"
declare -A DESELECT=(
  [actors/seed/lifecycle.py]="$SKIP_PROPS"
  [actors/seed/core.py]="$SKIP_PROPS"
  [actors/seed/replies.py]="$SKIP_PROPS"
  [actors/seed/moves.py]="$SKIP_PROPS"
  [actors/gates/checks.py]="$SKIP_PROPS"
  [contracts/envelope.py]="$SKIP_ENVELOPE_PROPS"
  [contracts/verifier.py]="$SKIP_ENVELOPE_PROPS"
)
DEFAULT=(actors/seed/lifecycle.py actors/seed/core.py actors/seed/replies.py actors/seed/moves.py
  actors/gates/checks.py contracts/envelope.py contracts/verifier.py)
MODULES=("$@")
[ ${#MODULES[@]} -eq 0 ] && MODULES=("${DEFAULT[@]}")

[ -x "$MUTMUT" ] || { echo "mutmut not found at $MUTMUT (pip install mutmut==3.8.1)" >&2; exit 2; }
export KASMINA_TEST_REDIS="${KASMINA_TEST_REDIS:-redis://127.0.0.1:6379/0}"

results=()
for module in "${MODULES[@]}"; do
  tests="${MUTATION_TESTS:-${TESTS[$module]:-}}"
  [ -n "$tests" ] || { echo "no test selection for $module" >&2; exit 2; }
  dir="$WORK/$(echo "$module" | tr '/.' '__')"
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$ROOT" && git ls-files -co --exclude-standard | grep -v '^mutants/' | tar -cf - -T -) \
    | tar -xf - -C "$dir"
  top="${module%%/*}"
  {
    echo "[mutmut]"
    echo "source_paths=$top"
    echo "only_mutate=$module"
    echo "also_copy="
    for pkg in leyline contracts bus actors scenarios kasmina benchmarks docs scripts; do
      [ "$pkg" != "$top" ] && echo "    $pkg"
    done
    echo "pytest_add_cli_args_test_selection="
    for t in $tests; do [ -e "$dir/$t" ] && echo "    $t"; done
    echo "pytest_add_cli_args=-q"
    if [ "${MUTATION_PROPERTY_TESTS:-0}" != 1 ] && [ -n "${DESELECT[$module]:-}" ]; then
      echo "    -k"
      echo "    ${DESELECT[$module]}"
    fi
    echo "    -p"
    echo "    no:cacheprovider"
  } > "$dir/setup.cfg"
  echo "== $module ($tests) in $dir" >&2
  only=()
  [ -n "${MUTATION_ONLY:-}" ] && only=("${MUTATION_ONLY}")
  (cd "$dir" && nice -n 10 "$MUTMUT" run --max-children "$JOBS" "${only[@]}" > run.log 2>&1) \
    || { echo "mutmut failed for $module, see $dir/run.log" >&2; tail -c 2000 "$dir/run.log" >&2; exit 1; }
  results+=("$module=$dir")
done

recheck=(--recheck)
[ "${MUTATION_RECHECK:-1}" = 1 ] || recheck=()
"$PY" "$ROOT/scripts/mutation_table.py" --mutmut "$MUTMUT" --show "${recheck[@]}" "${results[@]}" \
  | tee "$OUT"
