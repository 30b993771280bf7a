"""`kasmina replay --verify` on doctored recordings: every tamper exits non-zero, the original zero."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from bus import SealKey, open_bus, record
from contracts import KeyRing, streams
from kasmina.cli import main
from scenarios.cluster import running_cluster

SLOT = "l0.s0"
Lines = list[dict[str, object]]


async def _make(path: Path, ring: KeyRing, run: str) -> None:
    """A real run on fakeredis (commands, their refusals, state digests), recorded with ``ring``'s key."""
    bus = open_bus(f"fakeredis://{run}")
    try:
        async with running_cluster(bus, run=run, slots=[SLOT, "l1.s0"], ring=ring) as cl:
            for slot in (SLOT, "l1.s0", SLOT, SLOT, "l1.s0"):
                await cl.client.command(slot, "cull", wait=True, timeout_s=20)
            await cl.settle()
            names = await bus.streams(streams.prefix(run) + "*")
            seal = SealKey(ring.active.id, ring.active.secret)
            await record(bus, names, path, {"run": run}, seal=seal)
    finally:
        await bus.close()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, KeyRing]:
    """Two recordings of two runs under one key, and the key file."""
    base = tmp_path_factory.mktemp("rec")
    ring = KeyRing.generate()
    keys = base / "operator-keys.json"
    ring.save(keys)
    one, two = base / "one.kasrec", base / "two.kasrec"
    anyio.run(_make, one, ring, "tamper-one")
    anyio.run(_make, two, ring, "tamper-two")
    return one, two, keys, ring


def _read(path: Path) -> Lines:
    with gzip.open(path, "rt", encoding="utf-8") as src:
        return [json.loads(line) for line in src]


def _write(path: Path, lines: Lines) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.writelines(
            json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n" for line in lines
        )


def _replay(
    path: Path, keys: Path | None, capsys: pytest.CaptureFixture[str], *, verify: bool = True
) -> tuple[int, str]:
    args = ["replay", str(path), "--json", *(["--verify"] if verify else [])]
    if keys is not None:
        args += ["--keys", str(keys)]
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out + captured.err


def _events(lines: Lines, run: str) -> list[int]:
    return [i for i, line in enumerate(lines) if line.get("stream") == streams.events(run)]


def _truncate(lines: Lines, other: Lines, run: str) -> Lines:
    return lines[: len(lines) // 2]


def _truncate_keep_trailer(lines: Lines, other: Lines, run: str) -> Lines:
    last = _events(lines, run)[-1]
    return [line for i, line in enumerate(lines) if i != last]


def _delete_one_event(lines: Lines, other: Lines, run: str) -> Lines:
    middle = _events(lines, run)[len(_events(lines, run)) // 2]
    return lines[:middle] + lines[middle + 1 :]


def _delete_a_slot(lines: Lines, other: Lines, run: str) -> Lines:
    inbox = streams.inbox(run, "seed", SLOT)
    return [line for line in lines if line.get("stream") != inbox]


def _splice_other_run(lines: Lines, other: Lines, run: str) -> Lines:
    spliced = [dict(line) for line in other if "stream" in line]
    for line in spliced:
        line["stream"] = str(line["stream"]).replace("tamper-two", run)
    return [*lines[:-1], *spliced, lines[-1]]


def _relabel_run(lines: Lines, other: Lines, run: str) -> Lines:
    text = json.dumps(lines).replace(run, "tamper-new")
    return list(json.loads(text))


def _reorder_rewriting_ids(lines: Lines, other: Lines, run: str) -> Lines:
    out = [dict(line) for line in lines]
    a, b = _events(out, run)[2], _events(out, run)[3]
    out[a]["fields"], out[b]["fields"] = out[b]["fields"], out[a]["fields"]
    return out


def _downgrade_unsigned(lines: Lines, other: Lines, run: str) -> Lines:
    header = {k: v for k, v in lines[0].items() if k not in ("sig", "key_id")}
    return [{**header, "version": 1}, *lines[1:-1]]


TAMPERS: dict[str, Callable[[Lines, Lines, str], Lines]] = {
    "truncated": _truncate,
    "truncated, trailer kept": _truncate_keep_trailer,
    "one event deleted": _delete_one_event,
    "a slot deleted": _delete_a_slot,
    "another run spliced in": _splice_other_run,
    "run relabelled": _relabel_run,
    "reordered, ids rewritten": _reorder_rewriting_ids,
    "downgraded to unsigned v1": _downgrade_unsigned,
}


def test_the_untouched_recording_verifies(
    made: tuple[Path, Path, Path, KeyRing], capsys: pytest.CaptureFixture[str]
) -> None:
    """The recording as written verifies with the operator's keys (exit 0, recording_ok)."""
    one, _, keys, _ = made
    code, out = _replay(one, keys, capsys)
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["verified"] and summary["recording_ok"]


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_each_tamper_fails_verify(
    tamper: str,
    made: tuple[Path, Path, Path, KeyRing],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A doctored recording makes `replay --verify` exit non-zero and say why."""
    one, two, keys, _ = made
    doctored = TAMPERS[tamper](_read(one), _read(two), "tamper-one")
    assert doctored != _read(one)
    path = tmp_path / "doctored.kasrec"
    _write(path, doctored)
    code, out = _replay(path, keys, capsys)
    assert code != 0, out
    assert "Traceback" not in out


def test_a_forged_recording_with_its_own_keys_beside_it_fails(
    made: tuple[Path, Path, Path, KeyRing],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A recording signed by a stranger's key, with that key file beside it, never verifies:
    keys are only taken from --keys or the environment."""
    _, _, keys, _ = made
    monkeypatch.delenv("KASMINA_KEYS", raising=False)
    monkeypatch.delenv("KASMINA_KEY", raising=False)
    forger = KeyRing.generate()
    forged = tmp_path / "recording.kasrec"
    anyio.run(_make, forged, forger, "tamper-forged")
    forger.save(tmp_path / "keys.json")
    code, out = _replay(forged, None, capsys)
    assert code != 0 and "keys" in out
    code, out = _replay(forged, keys, capsys)
    assert code != 0, out


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_a_recording_cut_off_mid_file_replays_what_it_holds_and_fails_verify(
    keep: float,
    made: tuple[Path, Path, Path, KeyRing],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A recording file cut off inside its compressed data (a copy broken off) is an integrity
    failure, not an unreadable file: `--verify` exits 1 and names the cut; a replay without
    it shows the events read before the cut."""
    one, _, keys, _ = made
    data = one.read_bytes()
    cut = tmp_path / "cut.kasrec"
    cut.write_bytes(data[: int(len(data) * keep)])
    code, out = _replay(cut, keys, capsys)
    assert code == 1, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert not summary["recording_ok"] and not summary["verified"]
    assert "cut off" in out and "Traceback" not in out
    code, out = _replay(cut, keys, capsys, verify=False)
    assert code == 0 and len(out.strip().splitlines()) > 1  # rows, then the summary


def test_a_recording_whose_compressed_data_fails_its_check_fails_verify(
    made: tuple[Path, Path, Path, KeyRing],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A changed byte in the gzip trailer (its CRC): the lines read are replayed, and the
    recording's integrity fails naming the damage (`--verify` exit 1), not a crash or an
    unreadable file."""
    one, _, keys, _ = made
    data = bytearray(one.read_bytes())
    data[-6] ^= 0xFF  # the CRC-32 of the uncompressed data
    damaged = tmp_path / "damaged.kasrec"
    damaged.write_bytes(bytes(data))
    code, out = _replay(damaged, keys, capsys)
    assert code == 1, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert not summary["recording_ok"] and "damaged" in out and "Traceback" not in out
