"""Checkpoint files: safetensors tensors + JSON metadata, no pickle; older pickle files refused."""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from execution_helpers import backward, germinate, order
from other_models import NormMLP, batches, host_tensors
from safetensors import safe_open
from safetensors.torch import save_file

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.checkpoint import CheckpointError, read_checkpoint, write_atomic
from leyline import pb


def _runtime(tmp: pathlib.Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, ExecutionRuntime]:
    torch.manual_seed(0)
    model = NormMLP()
    slots = insert_slots(model, {"m": "mid"})
    opt = torch.optim.Adam(host_parameters(model, slots), lr=1e-3)
    cfg = RuntimeConfig(
        device="cpu", probe_every=0, report_every=0, barrier_frequency=0, checkpoint_dir=str(tmp)
    )
    rt = ExecutionRuntime(model, slots, opt, cfg, probe_batch=batches((16, 12), 3, 1, 99)[0])
    return model, opt, rt


def _train(
    model: torch.nn.Module, opt: torch.optim.Optimizer, rt: ExecutionRuntime, n: int
) -> None:
    data = batches((16, 12), 3, 4, seed=2)
    for step in range(rt.step + 1, rt.step + 1 + n):
        x, y = data[step % 4]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        opt.step()
        rt.on_step(step, loss, batch=(x, y))


def test_payload_round_trips_with_its_types(tmp_path: pathlib.Path) -> None:
    """Tensors of several dtypes (0-dim, bool, bfloat16), tuples, int-keyed mappings, None and
    non-finite floats come back as they went in."""
    payload = {
        "version": 3,
        "t": {"a": torch.arange(6.0).reshape(2, 3), "flag": torch.tensor([True, False])},
        "scalar": torch.tensor(2.5),
        "bf": torch.ones(3, dtype=torch.bfloat16),
        "state": {0: {"step": torch.tensor(4.0)}, 7: {"x": None}},
        "betas": (0.9, 0.999),
        "nan": math.nan,
        "list": [1, "two", [torch.zeros(1, dtype=torch.uint8)]],
    }
    path = tmp_path / "p.safetensors"
    write_atomic(payload, path)
    back = read_checkpoint(path)
    assert torch.equal(back["t"]["a"], payload["t"]["a"]) and back["t"]["flag"].dtype == torch.bool
    assert back["scalar"].shape == () and float(back["scalar"]) == 2.5
    assert back["bf"].dtype == torch.bfloat16
    assert set(back["state"]) == {0, 7} and float(back["state"][0]["step"]) == 4.0
    assert back["betas"] == (0.9, 0.999) and math.isnan(back["nan"])
    assert back["list"][:2] == [1, "two"] and back["list"][2][0].dtype == torch.uint8


def test_runtime_checkpoint_is_a_safetensors_file_with_json_metadata(
    tmp_path: pathlib.Path,
) -> None:
    """The runtime's checkpoint opens with the safetensors reader: the host and seed tensors are
    named tensors, the rest is JSON in the header; a restore of it gives back the same host."""
    model, opt, rt = _runtime(tmp_path)
    rt.submit(germinate("m", 0))
    rt.submit(order("m", pb.SEED_STAGE_TRAINING, 1))
    _train(model, opt, rt, 4)
    path = tmp_path / "ck.safetensors"
    rt.checkpoint(str(path))
    with open(path, "rb") as f:
        assert not f.read(4).startswith(b"PK")
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        meta = json.loads(f.metadata()["kasmina"])
    assert meta["format"] == "kasmina-checkpoint/1" and meta["payload"]["version"] == 3
    assert any(n.startswith("host/") for n in names)
    assert any(n.startswith("slots/m/seed/") for n in names)
    saved = host_tensors(model)
    _train(model, opt, rt, 3)
    assert rt.restore(str(path)) == rt.step - 3
    assert all(torch.equal(saved[k], v) for k, v in host_tensors(model).items())


def test_an_older_pickle_checkpoint_is_refused_with_a_clear_error(tmp_path: pathlib.Path) -> None:
    """A ``torch.save`` file (the older format) is refused before anything is unpickled, restore
    changes nothing, and a rollback to it says it failed and changes nothing."""
    model, opt, rt = _runtime(tmp_path)
    old = tmp_path / "guard-rank0-step1.pt"
    torch.save({"version": 2, "step": 1, "slots": {}}, old)
    with pytest.raises(CheckpointError, match="pickle"):
        read_checkpoint(old)
    before = host_tensors(model)
    with pytest.raises(CheckpointError, match="older version"):
        rt.restore(str(old))
    assert all(torch.equal(before[k], v) for k, v in host_tensors(model).items())
    rt.submit(germinate("m", 0))
    rt.submit(order("m", pb.SEED_STAGE_TRAINING, 1))
    rt.submit(order("m", pb.SEED_STAGE_CULLED, 3))
    _train(model, opt, rt, 2)
    rt.checkpoints[:] = [(1, str(old))]
    rt.request_rollback("test", ["m"], 2)
    _train(model, opt, rt, 3)
    critical = [m.message for k, m in rt.drain_outbox() if k == "telemetry.raw"]
    assert any("failed, nothing changed" in m and "pickle" in m for m in critical), critical
    assert rt.rolled_back == []


@pytest.mark.parametrize("low_byte", [0x80, 0x50])
def test_any_header_length_reads_back(tmp_path: pathlib.Path, low_byte: int) -> None:
    """A checkpoint whose 8-byte header length starts with the byte a pickle stream starts with
    (0x80) is read as the safetensors file it is, as is any other."""
    model, opt, rt = _runtime(tmp_path)
    _train(model, opt, rt, 2)
    path = tmp_path / "plain.safetensors"
    rt.checkpoint(str(path))
    with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    padded = tmp_path / "padded.safetensors"
    for pad in range(512):  # a filler entry beside the checkpoint's metadata moves the length
        save_file(tensors, str(padded), metadata={**meta, "filler": "x" * pad})
        if padded.read_bytes()[0] == low_byte:
            break
    assert padded.read_bytes()[0] == low_byte
    assert read_checkpoint(padded)["step"] == read_checkpoint(path)["step"]


def test_other_files_are_refused_with_their_reason(tmp_path: pathlib.Path) -> None:
    """Garbage, a truncated checkpoint and a safetensors file without the metadata are refused."""
    garbage = tmp_path / "g"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        read_checkpoint(garbage)
    good = tmp_path / "ok.safetensors"
    write_atomic({"version": 3, "x": torch.ones(100)}, good)
    cut = tmp_path / "cut"
    cut.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(CheckpointError):
        read_checkpoint(cut)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.ones(2)}, str(bare))
    with pytest.raises(CheckpointError, match="without Kasmina checkpoint metadata"):
        read_checkpoint(bare)
