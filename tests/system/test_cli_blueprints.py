"""`kasmina blueprints publish|list`: a custom seed published once, germinated by id elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina
from actors.artifacts import BusStore, DirectoryStore, seal
from actors.artifacts.store import INDEX_KEY, artifact_key
from actors.execution import SlotShape
from actors.execution.kernels import pack_weights
from actors.execution.stages import stage_name
from bus import open_bus
from bus.testing import purge_prefix, real_redis_url
from contracts import KasminaConfig, KeyRing, streams
from kasmina.cli import main

SEED_FILE = """
import torch
from torch import nn


class Gated(nn.Module):
    def __init__(self, d, r):
        super().__init__()
        self.down = nn.Linear(d, r)
        self.up = nn.Linear(r, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return self.up(torch.tanh(self.down(h)))


def make(shape, params, host):
    return Gated(shape.out_shape[-1], int(params.get("rank", 4)))


def not_a_module(shape, params, host):
    return 3
"""


def _cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict], str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), [json.loads(line) for line in out.splitlines()], err


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A key file in $KASMINA_KEYS and the seed file; returns the directory store's path."""
    KeyRing.generate().save(tmp_path / "keys.json")
    monkeypatch.setenv("KASMINA_KEYS", str(tmp_path / "keys.json"))
    monkeypatch.delenv("KASMINA_CONFIG", raising=False)
    (tmp_path / "seeds.py").write_text(SEED_FILE)
    return tmp_path / "store"


def test_publish_a_file_factory_and_a_registered_blueprint_then_list(
    setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A factory in a .py file becomes a program artifact, a registered blueprint a weights one;
    list shows both verified with their manifests, and publishing again gives the same id."""
    code, (prog,), _ = _cli("blueprints", "publish", f"{tmp_path}/seeds.py:make", "--shape", "16",
                            "--param", "rank=3", "--store", str(setup), capsys=capsys)  # fmt: skip
    assert code == 0 and prog["kind"] == "program" and prog["blueprint"] == "make"
    assert prog["input_shape"] == [16] and prog["param_count"] == 16 * 3 + 3 + 3 * 16 + 16
    code, (weights,), _ = _cli("blueprints", "publish", "lowrank", "--shape", "16", "--param",
                               "rank=2", "--store", str(setup), capsys=capsys)  # fmt: skip
    assert code == 0 and weights["kind"] == "weights" and weights["param_count"] == 2 * 16 * 2
    code, rows, _ = _cli("blueprints", "list", "--store", str(setup), capsys=capsys)
    assert code == 0 and {r["artifact"] for r in rows} == {prog["artifact"], weights["artifact"]}
    assert all(r["verified"] for r in rows)
    _, (again,), _ = _cli("blueprints", "publish", f"{tmp_path}/seeds.py:make", "--shape", "16",
                          "--param", "rank=3", "--store", str(setup), capsys=capsys)  # fmt: skip
    assert again["artifact"] == prog["artifact"]


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("nosuch", [], "unknown blueprint 'nosuch'"),
        ("missing.py:make", [], "no file missing.py"),
        ("SEEDS:absent", [], "has no 'absent'"),
        ("SEEDS:not_a_module", [], "returned int, not a module"),
        ("SEEDS:make", ["--shape", "0"], "expected positive integers"),
        ("SEEDS:make", ["--param", "rank"], "expected NAME=NUMBER"),
        ("residual_mlp", ["--param", "hiden=8"], "takes no parameter hiden"),
        ("residual_mlp", ["--param", "hidden=2.5"], "hidden must be a whole number"),
        ("no_such_package_x:make", [], "cannot import"),
    ],
)
def test_bad_input_is_a_clear_error_and_stores_nothing(
    setup: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    target: str,
    extra: list[str],
    message: str,
) -> None:
    """Each bad target, shape or parameter exits 2 with one line saying what is wrong."""
    target = target.replace("SEEDS", f"{tmp_path}/seeds.py")
    args = ["--shape", "16", *extra] if "--shape" not in extra else extra
    code, out, err = _cli("blueprints", "publish", target, *args, "--store", str(setup),
                          capsys=capsys)  # fmt: skip
    assert code == 2 and out == [] and message in err
    assert DirectoryStore(setup).ids_sync() == []


def test_a_key_that_may_not_publish_is_refused(
    setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trainer-only key cannot sign an artifact."""
    KeyRing.generate(roles={"trainer"}).save(tmp_path / "trainer.json")
    code, _, err = _cli("blueprints", "publish", "lowrank", "--shape", "16", "--keys",
                        str(tmp_path / "trainer.json"), "--store", str(setup), capsys=capsys)  # fmt: skip
    assert code == 2 and "may not sign artifacts" in err


CONFIG = KasminaConfig.load(
    overrides={
        "barrier.frequency": 2,
        "lifecycle.training_steps": 200,
        "gates.max_latency_overhead": 50.0,
    }
)


def _publish_on_redis(tmp_path: Path, env: dict[str, str], rank: int) -> str:
    """Publish the file's seed through a separate CLI process; returns the artifact id."""
    done = subprocess.run(
        [sys.executable, "-m", "kasmina", "blueprints", "publish", f"{tmp_path}/seeds.py:make",
         "--shape", "16", "--param", f"rank={rank}"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["artifact"])


async def _tampered(url: str, ring: KeyRing) -> tuple[str, list[str]]:
    """Store a lowrank artifact, then flip a bit of its payload in Redis; returns its id and the
    ids the store lists."""
    sealed = seal(*pack_weights("lowrank", SlotShape((2, 16), torch.float32), {"rank": 2}), ring)
    bus = open_bus(url)
    await BusStore(bus).put(sealed)
    key = artifact_key(sealed.id, "payload")
    payload = bytearray(await bus.get_value(key) or b"")
    payload[-1] ^= 1
    await bus.set_value(key, bytes(payload))
    listed = await BusStore(bus).ids()
    await bus.close()
    return sealed.id, listed


async def _clean(url: str, run: str, ids: list[str]) -> None:
    bus = open_bus(url)
    await purge_prefix(bus, streams.prefix(run))
    for i in ids:
        await bus.delete(*(artifact_key(i, p) for p in ("manifest", "signature", "payload")))
        await bus.client.srem(INDEX_KEY, i)  # type: ignore[attr-defined]
    await bus.close()


@pytest.mark.redis
def test_published_on_redis_germinated_by_a_trainer_loaded_once_tamper_refused(
    setup: Path, tmp_path: Path
) -> None:
    """A CLI process publishes a seed to Redis; a trainer attached to a run on that Redis
    germinates it at two slots by id (one load, one hit) without the seed's code, and refuses a
    copy whose payload was changed in Redis, naming the reason."""
    url, run = real_redis_url(), f"kern-{uuid.uuid4().hex[:8]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KASMINA")},
           "KASMINA_KEYS": str(tmp_path / "keys.json"), "KASMINA_REDIS": url}  # fmt: skip
    good = _publish_on_redis(tmp_path, env, 3)
    bad, listed = anyio.run(_tampered, url, KeyRing.load(tmp_path / "keys.json"))
    assert {good, bad} <= set(listed)
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = (x[:, :4].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 2))  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    try:
        with kasmina.attach(model, {"a": "1", "b": "3", "t": "2"}, opt, redis=url, run=run,
                            keys=tmp_path / "keys.json", config=CONFIG, actors=True,
                            lockstep=True, device="cpu", probe_batch=(x[:32], y[:32])) as kas:  # fmt: skip
            sent = {2: ("a", good), 4: ("b", good), 6: ("t", bad)}
            for step in range(40):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                kas.on_step(step, loss)
                if step in sent:
                    kas.command(sent[step][0], "germinate", artifact=sent[step][1])
                if step > 8 and kas.runtime.kernels.stats.refusals and kas.stage("b") != "DORMANT":
                    break
            stats = kas.runtime.kernels.stats
            assert {kas.stage("a"), kas.stage("b")} <= {"GERMINATED", "TRAINING"}
            assert (stats.loads, stats.misses, stats.hits) == (1, 2, 1)
            assert kas.stage("t") == "DORMANT" and stats.refused == {"checksum_mismatch": 1}
            refused = [m for _, k, m in kas.events() if k == "lifecycle.refused" and m.slot == "t"]
            assert refused and "checksum_mismatch" in refused[-1].reason
            assert stage_name(int(kas.runtime.slots["t"].stage)) == "DORMANT"
    finally:
        anyio.run(_clean, url, run, [good, bad])


async def _plant_wrong_type(url: str, artifact_id: str) -> None:
    bus = open_bus(url)
    await bus.publish(artifact_key(artifact_id, "manifest"), {"m": b"a stream, not a value"})
    await bus.register(INDEX_KEY, artifact_id)
    await bus.close()


def test_list_shows_an_unreadable_artifact_and_every_other(
    setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer's key of another type under one indexed artifact id made `blueprints list`
    print nothing and exit 2: it now lists that id as unreadable, and every real one."""
    url = f"fakeredis://art-{uuid.uuid4().hex[:8]}"
    code, (good,), _ = _cli("blueprints", "publish", "lowrank", "--shape", "16", "--param",
                            "rank=2", "--store", url, capsys=capsys)  # fmt: skip
    assert code == 0
    planted = "f" * 64
    anyio.run(_plant_wrong_type, url, planted)
    code, rows, _ = _cli("blueprints", "list", "--store", url, capsys=capsys)
    assert code == 0
    by_id = {r["artifact"]: r for r in rows}
    assert by_id[good["artifact"]]["verified"] is True
    assert by_id[planted]["verified"] is False
    assert by_id[planted]["reason"].startswith("unreadable: WRONGTYPE")
