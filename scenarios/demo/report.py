"""The demo's outputs: summary (JSON-able), report.md, plot.png and model.safetensors."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from actors.execution.checkpoint import write_atomic
from actors.execution.stages import stage_name
from actors.gates.checks import bound_parts
from actors.seed.lifecycle import gate_name
from leyline import pb
from scenarios.demo.runner import DemoRun, History

S = pb.SeedLifecycleStage
_COLOURS = {
    "GERMINATED": "#c7e9c0",
    "TRAINING": "#fdd0a2",
    "BLENDING": "#9ecae1",
    "SHADOWING": "#bcbddc",
    "PROBATIONARY": "#dadaeb",
    "FOSSILIZED": "#74c476",
    "CULLED": "#fb6a4a",
    "EMBARGOED": "#fcbba1",
    "RESETTING": "#fee0d2",
}


def transitions(run: DemoRun) -> list[pb.LifecycleTransition]:
    """Every recorded lifecycle transition, in order."""
    return [m for _, k, m in run.events if k == "lifecycle.transition"]


def gate_results(run: DemoRun) -> list[pb.GateResult]:
    """Every recorded gate result, in order."""
    return [m for _, k, m in run.events if k == "gate.result"]


def seeds_by_final_stage(run: DemoRun) -> dict[str, int]:
    """Final stage of every seed germinated (a seed ends culled, fossilized, or where it is)."""
    final: list[str] = []
    current: dict[str, str] = {}
    for t in transitions(run):
        to = stage_name(t.to_stage)
        if t.to_stage == S.SEED_STAGE_GERMINATED:
            current[t.slot] = to
        elif t.slot in current:
            if t.to_stage == S.SEED_STAGE_CULLED:
                final.append("CULLED")
                del current[t.slot]
            else:
                current[t.slot] = to
    final.extend(current.values())
    return dict(Counter(final))


def _check(result: pb.GateResult, name: str) -> pb.GateCheck | None:
    return next((c for c in result.checks if c.name == name), None)


def _gain_parts(lcb: pb.GateCheck | None) -> tuple[float | None, float | None, float | None]:
    """Mean, standard error (None for the exact test) and n of a ``cf_gain_lcb`` check."""
    parts = bound_parts(lcb.detail) if lcb is not None else None
    if parts is None:
        return None, None, None
    return parts[0], None if math.isnan(parts[2]) else parts[2], parts[3]


def gated_gains(run: DemoRun) -> list[dict[str, Any]]:
    """Every G4 verdict with the gain it judged: the paired validation gain (α=1 vs α=0, in
    accuracy), its standard error, the one-sided lower bound and the net gain after cost."""
    out: list[dict[str, Any]] = []
    for r in gate_results(run):
        if r.gate != pb.SEED_GATE_G4_SYSTEM_IMPACT:
            continue
        lcb, net = _check(r, "cf_gain_lcb"), _check(r, "cf_net_gain")
        gain, gain_se, n = _gain_parts(lcb)
        out.append(
            {
                "slot": r.slot,
                "step": r.step,
                "passed": r.passed,
                "gain": gain,
                "gain_se": gain_se,
                "n": None if n is None else int(n),
                "lower_bound": None if lcb is None or lcb.missing else lcb.value,
                "net_gain": None if net is None or net.missing else net.value,
                "detail": "" if lcb is None else lcb.detail,
            }
        )
    return out


def summary(run: DemoRun, paths: dict[str, Path]) -> dict[str, Any]:
    """The ``--json`` object (docs/design.md §7 fields first)."""
    results = gate_results(run)
    first = run.germinations[0] if run.germinations else None
    return {
        "task": run.options.task,
        "accuracy_before": first[2] if first else None,
        "accuracy_after": run.accuracy_after,
        "host_params": run.host_params,
        "final_params": run.final_params,
        "seeds": seeds_by_final_stage(run),
        "report": str(paths["report"]),
        "plot": str(paths["plot"]),
        "recording": str(paths["recording"]),
        "accuracy_static_host": run.accuracy_static,
        "gates": {
            "passed": sum(r.passed for r in results),
            "failed": sum(not r.passed for r in results),
            "failures": [
                {"slot": r.slot, "gate": gate_name(r.gate), "step": r.step, "reason": r.reason}
                for r in results
                if not r.passed
            ],
        },
        "gated_gains": gated_gains(run),
        "germinations": [
            {"step": s, "slot": p.slot, "blueprint": p.blueprint, "why": p.why}
            for s, p, _ in run.germinations
        ],
        "no_growth": [{"step": s, "why": why} for s, why in run.notes],
        "model": str(paths["model"]),
        "keys": str(paths["keys"]) if "keys" in paths else None,
        "run": run.run_id,
        "bus": run.bus_url,
        "steps": run.options.steps,
        "seed": run.options.seed,
        "events": len(run.events),
        "elapsed_s": round(run.elapsed_s, 2),
    }


def write_model(run: DemoRun, path: Path) -> None:
    """Final state dict (seeds included) and slot stages, as a checkpoint file (safetensors
    tensors + JSON metadata; :func:`actors.execution.checkpoint.read_checkpoint` reads it)."""
    write_atomic(
        {
            "task": run.options.task,
            "state_dict": run.model_state,
            "slots": {
                sid: {
                    "stage": stage_name(v["stage"]),
                    "blueprint": v["blueprint"],
                    "alpha": v["alpha"],
                }
                for sid, v in run.slots.items()
            },
        },
        path,
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pp"


def write_report(run: DemoRun, info: dict[str, Any], path: Path) -> None:
    """report.md: summary, germinations, timeline of transitions with causes, gate results."""
    lines = _summary_lines(run, info) + _germination_lines(run) + _gain_lines(info)
    lines += _timeline_lines(run) + _gate_lines(run)
    keys = info.get("keys") or "$KASMINA_KEYS"
    lines += ["", f"Replay: `kasmina replay {run.recording} --keys {keys} --verify`", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _summary_lines(run: DemoRun, info: dict[str, Any]) -> list[str]:
    b = run.budgets
    return [
        f"# Kasmina demo: {run.options.task}",
        "",
        f"Run `{run.run_id}` on `{run.bus_url}`, {run.options.steps} steps, seed "
        f"{run.options.seed}, {run.elapsed_s:.1f} s.",
        "",
        "| | test accuracy |",
        "|---|---|",
        f"| host at the first germination (before growth) | {_pct(info['accuracy_before'])} |",
        f"| grown, final (after) | {_pct(info['accuracy_after'])} |",
        f"| static host, same seed and steps | {_pct(info['accuracy_static_host'])} |",
        "",
        f"Parameters: host {run.host_params} -> final {run.final_params}. "
        f"Seeds by final stage: {info['seeds'] or 'none'}. "
        f"Gates: {info['gates']['passed']} passed, {info['gates']['failed']} failed.",
        "",
        f"Budgets: barrier every {b.barrier} steps; earliest germination {b.earliest}; "
        f"TRAINING {b.training}, BLENDING {b.blend}, SHADOWING {b.shadowing}, "
        f"PROBATIONARY {b.probationary}, embargo {b.embargo} steps.",
        "",
    ]


def _germination_lines(run: DemoRun) -> list[str]:
    lines = ["## Germinations (Tamiyo stand-in)", ""]
    lines += [
        f"- step {s}: `{p.blueprint}` at `{p.slot}` — {p.why}; host test accuracy then {_pct(a)}"
        for s, p, a in run.germinations
    ] or ["- none"]
    return lines + [f"- step {s}: {why}" for s, why in run.notes]


def _gain_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Gated gain (G4: paired validation test, seed at α=1 vs α=0)",
        "",
        "| step | slot | gain | se | n | lower bound | net of cost | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {g['step']} | {g['slot']} | {_pp(g['gain'])} | {_pp(g['gain_se'])} | "
        f"{'n/a' if g['n'] is None else int(g['n'])} | {_pp(g['lower_bound'])} | "
        f"{_pp(g['net_gain'])} | {'FOSSILIZED' if g['passed'] else 'CULLED'} |"
        for g in info["gated_gains"]
    ] or ["| | | | | | | | no seed reached G4 |"]


def _timeline_lines(run: DemoRun) -> list[str]:
    lines = ["", "## Timeline", "", "| step | slot | from | to | cause |", "|---|---|---|---|---|"]
    return lines + [
        f"| {t.step} | {t.slot} | {stage_name(t.from_stage)} | {stage_name(t.to_stage)} | "
        f"{t.cause.replace('|', '/')} |"
        for t in transitions(run)
    ]


def _gate_lines(run: DemoRun) -> list[str]:
    lines = [
        "",
        "## Gate results",
        "",
        "| step | slot | gate | passed | checks |",
        "|---|---|---|---|---|",
    ]
    for r in gate_results(run):
        checks = "; ".join(
            f"{'✓' if c.passed else '✗'} {c.name}="
            + ("missing" if c.missing else f"{c.value:.4g} ({c.comparator} {c.threshold:g})")
            for c in r.checks
        )
        lines.append(f"| {r.step} | {r.slot} | {gate_name(r.gate)} | {r.passed} | {checks} |")
    return lines


def write_plot(run: DemoRun, path: Path) -> None:
    """Loss and accuracy curves, each slot's stages as coloured bands, alpha curves."""
    plot_history(run.history, f"Kasmina demo: {run.options.task}", path, run.accuracy_static)


def plot_history(
    h: History, title: str, path: Path, reference_accuracy: float | None = None
) -> None:
    """The demo's plot of any run's curves: losses, validation accuracy (with a dashed static-host
    reference when given), and per slot its stages as coloured bands under its alpha curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = list(h.stages)
    fig, axes = plt.subplots(
        2 + len(slots),
        1,
        figsize=(9, 6 + 1.2 * len(slots)),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 2] + [1] * len(slots)},
    )
    ax = axes[0]
    ax.plot(h.steps, h.train_loss, label="train loss", lw=1)
    ax.plot(h.steps, h.val_loss, label="val loss", lw=1)
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax.set_title(title)
    axes[1].plot(h.steps, h.val_acc, color="tab:green", lw=1)
    if reference_accuracy is not None:
        axes[1].axhline(reference_accuracy, color="grey", ls="--", lw=1, label="static host (test)")
        axes[1].legend(loc="lower right")
    axes[1].set_ylabel("val acc")
    for ax, sid in zip(axes[2:], slots, strict=True):
        _stage_bands(ax, h.steps, [stage_name(s) for s in h.stages[sid]])
        ax.plot(h.steps, h.alphas[sid], color="black", lw=1)
        ax.set_ylim(-0.05, 1.1)
        ax.set_ylabel(f"{sid}\nα", fontsize=8)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stage_bands(ax: Any, steps: list[int], stages: list[str]) -> None:
    """One coloured, labelled band per run of equal stages (stages without a colour left bare)."""
    start = 0
    for i in range(1, len(stages) + 1):
        if i == len(stages) or stages[i] != stages[start]:
            colour = _COLOURS.get(stages[start])
            if colour is not None:
                end = steps[i] if i < len(stages) else steps[-1]
                ax.axvspan(steps[start], end, color=colour, lw=0)
                ax.text(
                    (steps[start] + end) / 2,
                    0.5,
                    stages[start][:5],
                    ha="center",
                    va="center",
                    fontsize=7,
                )
            start = i
