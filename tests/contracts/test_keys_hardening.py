"""Keys: expiry judged at each message's own stamp, revocation, pruning, roles, safe key file writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from contracts import REGISTRY, KeyRing, KeyRingError, Reason, Signer, Verifier, kinds, streams
from contracts.errors import ContractError
from contracts.roles import KINDS_BY_ROLE, ROLES, valid_sender
from kasmina.cli import main
from leyline import pb

NOW = 1_800_000_000 * 10**9
STREAM = streams.inbox("r1", "seed", "layer1.s0")
S = 10**9
CMD = pb.SeedCommand(slot="layer1.s0", pause=pb.Pause())
ORDER = pb.ExecutionOrder(slot="layer1.s0")


def _seal(ring: KeyRing, ts: int, kind: str = "seed.command", sender: str = "tamiyo") -> bytes:
    body = CMD if kind == "seed.command" else REGISTRY[kind]()
    return Signer(ring, sender, clock=lambda: ts).seal(kind, body, stream=STREAM)


def _reason(verifier: Verifier, frame: bytes) -> Reason:
    with pytest.raises(ContractError) as info:
        verifier.open(frame, stream=STREAM)
    return info.value.code


def test_replay_honours_expiry_at_the_event_stamp() -> None:
    """A retired key verifies in replay what it signed while valid, and nothing stamped after."""
    ring = KeyRing.generate(now_ns=NOW)
    old = ring.active
    rotated = ring.rotate(grace_s=10, now_ns=NOW)  # old key expires at NOW + 10 s
    before = _seal(ring, NOW + 5 * S)
    after = _seal(ring, NOW + 11 * S)  # signed with the retired key after its expiry
    replay = Verifier(rotated, clock=lambda: NOW + 3600 * S, replay=True)
    assert replay.open(before, stream=STREAM).key_id == old.id
    assert _reason(replay, after) is Reason.EXPIRED_KEY
    live = Verifier(rotated, clock=lambda: NOW + 11 * S, tolerance_s=60)
    assert _reason(live, after) is Reason.EXPIRED_KEY


def test_revoked_key_verifies_nothing() -> None:
    """After revoke, the key's messages are refused live and in replay, whatever their stamp."""
    ring = KeyRing.generate(now_ns=NOW)
    leaked = ring.active
    frame = _seal(ring, NOW)
    revoked = ring.rotate(grace_s=3600, now_ns=NOW).revoke(leaked.id, now_ns=NOW + S)
    assert _reason(Verifier(revoked, clock=lambda: NOW), frame) is Reason.REVOKED_KEY
    assert _reason(Verifier(revoked, replay=True), frame) is Reason.REVOKED_KEY
    with pytest.raises(KeyRingError, match="rotate"):
        revoked.revoke(revoked.active.id)
    assert KeyRing.from_json(revoked.to_json()).get(leaked.id).revoked_ns == NOW + S  # type: ignore[union-attr]
    assert revoked.prune(before_ns=0).get(leaked.id) is None


def test_roles_limit_what_a_key_may_sign() -> None:
    """A trainer key cannot command a slot nor forge an order; a controller key can command."""
    trainer = KeyRing.generate(now_ns=NOW, roles={"trainer"})
    controller = KeyRing.generate(now_ns=NOW, roles={"controller"})
    both = KeyRing(
        [*trainer.members(), *controller.members()], trainer.active.id
    )  # one receiver trusts both
    verifier = Verifier(both, clock=lambda: NOW)
    assert _reason(verifier, _seal(trainer, NOW)) is Reason.FORBIDDEN_KIND
    assert _reason(verifier, _seal(trainer, NOW, "exec.order")) is Reason.FORBIDDEN_KIND
    assert verifier.open(_seal(trainer, NOW, "step.report"), stream=STREAM).kind == "step.report"
    assert verifier.open(_seal(controller, NOW), stream=STREAM).kind == "seed.command"
    assert _reason(Verifier(both, replay=True), _seal(trainer, NOW)) is Reason.FORBIDDEN_KIND


def test_every_kind_has_a_role_and_old_files_hold_every_role() -> None:
    """Each registered kind is signable by some role; a key file without roles holds them all."""
    assert set(REGISTRY) == set().union(*KINDS_BY_ROLE.values())
    data = KeyRing.generate(now_ns=NOW).to_json()
    for item in data["keys"]:
        del item["roles"]
    assert KeyRing.from_json(data).active.roles == ROLES
    with pytest.raises(KeyRingError, match="roles"):
        KeyRing.from_json({**data, "keys": [{**data["keys"][0], "roles": ["root"]}]})


@pytest.mark.parametrize("sender", ["tamiyo\nforged line", "a b", "", "x" * 129, "é", "a;b"])
def test_sender_names_are_not_free_text(sender: str) -> None:
    """Sender names accepted by the actors are [A-Za-z0-9_.:-]{1,128}, nothing else."""
    assert not valid_sender(sender)
    assert valid_sender("seed:layer1.s0") and valid_sender("execution:0")


def test_save_ignores_a_planted_temporary_file(tmp_path: Path) -> None:
    """A world-readable file or a symlink where the temporary file goes is neither used nor followed."""
    target = tmp_path / "keys.json"
    planted = tmp_path / f".{target.name}.tmp"
    planted.write_text("planted")
    planted.chmod(0o644)
    KeyRing.generate().save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert planted.read_text() == "planted"  # not reused
    planted.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    planted.symlink_to(elsewhere)
    KeyRing.generate().save(target)
    assert not elsewhere.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [planted.name]


def test_save_refuses_a_symlinked_target(tmp_path: Path) -> None:
    """Writing keys through a symlink at the target path is refused; the link's target is untouched."""
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "keys.json"
    link.symlink_to(real)
    with pytest.raises(KeyRingError, match="symbolic link"):
        KeyRing.generate().save(link)
    assert real.read_text() == "{}"


def _cli(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[dict[str, object]]]:
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr().out
    return int(done.value.code or 0), [json.loads(line) for line in out.splitlines() if line]


def test_cli_revoke_prune_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`keys revoke` stops a key verifying, `keys prune` drops it, `keys list` shows no secret."""
    path = str(tmp_path / "keys.json")
    assert _cli(["keys", "generate", "-o", path, "--roles", "controller,operator"], capsys)[0] == 0
    first = KeyRing.load(path).active
    assert first.roles == {"controller", "operator"}
    assert _cli(["keys", "rotate", path, "--grace", "3600"], capsys)[0] == 0
    assert KeyRing.load(path).active.roles == first.roles  # the new key keeps the roles
    assert _cli(["keys", "revoke", path, first.id], capsys)[0] == 0
    assert KeyRing.load(path).get(first.id).revoked_ns is not None  # type: ignore[union-attr]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    code, rows = _cli(["keys", "list", path], capsys)
    assert code == 0 and {r["id"] for r in rows} == set(KeyRing.load(path).ids())
    assert all("secret" not in r for r in rows)
    code, rows = _cli(["keys", "prune", path], capsys)
    assert code == 0 and rows[0]["dropped"] == [first.id]
    assert KeyRing.load(path).ids() == [KeyRing.load(path).active.id]
    active = KeyRing.load(path).active.id
    assert _cli(["keys", "revoke", path, active], capsys)[0] != 0


def test_one_verifier_judges_a_key_it_already_used_at_each_message_and_ring() -> None:
    """A verifier that has verified with a key still refuses it once its clock passes the key's
    expiry, and its twin over a ring that revoked the key refuses it, while the verifier over the
    old ring goes on accepting what the key signed in time."""
    ring = KeyRing.generate(now_ns=NOW)
    old = ring.active
    rotated = ring.rotate(grace_s=10, now_ns=NOW)  # old key expires at NOW + 10 s
    now = [NOW + 5 * S]
    live = Verifier(rotated, clock=lambda: now[0], tolerance_s=60)
    early = _seal(ring, NOW + 5 * S)
    assert live.open(early, stream=STREAM).key_id == old.id
    now[0] = NOW + 10 * S
    assert _reason(live, early) is Reason.EXPIRED_KEY
    now[0] = NOW + 9 * S
    assert live.open(early, stream=STREAM).key_id == old.id
    revoked = live.with_ring(rotated.revoke(old.id, now_ns=NOW + 9 * S))
    assert _reason(revoked, early) is Reason.REVOKED_KEY
    assert live.open(early, stream=STREAM).key_id == old.id


def test_a_verifier_refuses_a_kind_the_key_may_not_sign_after_accepting_one_it_may() -> None:
    """Once a key is known to a verifier, each frame's kind is still judged against its roles
    and the registry: a command passes, an order and an unknown kind from the same key do not."""
    controller = KeyRing.generate(now_ns=NOW, roles={"controller"})
    verifier = Verifier(controller, clock=lambda: NOW)
    assert verifier.open(_seal(controller, NOW), stream=STREAM).kind == "seed.command"
    assert _reason(verifier, _seal(controller, NOW, kind=kinds.EXEC_ORDER)) is (
        Reason.FORBIDDEN_KIND
    )
    unknown = Signer(controller, "tamiyo", clock=lambda: NOW).seal(
        "no.such.kind", b"", stream=STREAM
    )
    assert _reason(verifier, unknown) is Reason.UNKNOWN_KIND


def _file(**changes: object) -> dict[str, object]:
    """A valid key file's JSON with one key's fields (or the file's, for file-level names)
    changed; a value of ``...`` removes the field."""
    data = KeyRing.generate(now_ns=NOW).to_json()
    key = data["keys"][0]
    for name, value in changes.items():
        target = data if name in ("format", "version", "active", "keys") else key
        if value is ...:
            del target[name]
        else:
            target[name] = value
    return data


@pytest.mark.parametrize(
    "changes",
    [
        {"roles": None},
        {"roles": []},
        {"roles": ["root"]},
        {"created_ns": "1"},
        {"expires_ns": 1.5},
        {"revoked_ns": True},
        {"expires_ns": -1},
        {"id": 7},
        {"secret": 12},
        {"secret": "not base64!"},
        {"version": True},
        {"version": 1.0},
        {"active": 3},
        {"keys": {}},
    ],
    ids=lambda c: ",".join(f"{k}={v!r}" for k, v in c.items()),
)
def test_a_key_file_field_of_the_wrong_type_refuses_the_whole_file(
    changes: dict[str, object],
) -> None:
    """wire.md §4: a `roles` of null is no list (never "every role"); stamps are integers or
    null; ids, secrets, version and active have exactly their types."""
    with pytest.raises(KeyRingError):
        KeyRing.from_json(_file(**changes))


@pytest.mark.parametrize("data", [[1, 2], "text", 3, None])
def test_a_key_file_that_is_no_json_object_is_refused_with_a_reason(data: object) -> None:
    """A key file whose top level is not an object is a KeyRingError, not a crash."""
    with pytest.raises(KeyRingError, match="not a kasmina key file"):
        KeyRing.from_json(data)  # type: ignore[arg-type]


def test_optional_key_fields_may_be_absent_or_null() -> None:
    """`created_ns`, `expires_ns` and `revoked_ns` may be missing or null; no `roles`: every role."""
    for value in (..., None):
        ring = KeyRing.from_json(
            _file(created_ns=value, expires_ns=value, revoked_ns=value, roles=...)
        )
        assert ring.active.roles == ROLES and ring.active.created_ns == 0


def test_cli_reports_a_key_file_that_is_no_object_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kasmina keys list` on a key file holding a JSON list exits 2 with the reason."""
    path = tmp_path / "keys.json"
    path.write_text("[1, 2]")
    with pytest.raises(SystemExit) as done:
        main(["keys", "list", str(path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "not a kasmina key file" in err and "Traceback" not in err
