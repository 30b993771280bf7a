"""A command is built from exactly the keywords its action takes: anything else is refused with
a clear error before anything is sent (a blueprint's parameter passed as a keyword was dropped,
and the default seed built)."""

from __future__ import annotations

import pytest

from actors.client import build_command
from leyline import pb


@pytest.mark.parametrize(
    ("action", "keywords", "named"),
    [
        ("germinate", {"blueprint": "residual_mlp", "hidden": 8}, "params={'hidden'"),
        ("germinate", {"blueprint": "residual_mlp", "blend_step": 5}, "blend_step"),
        ("cull", {"blueprint": "residual_mlp"}, "cull takes no blueprint"),
        ("adjust_optimizer", {"lr": 0.5}, "it takes lr_scale, weight_decay"),
    ],
)
def test_a_keyword_the_action_does_not_take_is_refused(
    action: str, keywords: dict[str, object], named: str
) -> None:
    """The error names the keyword, what the action takes, and where a blueprint's goes."""
    with pytest.raises(TypeError, match="takes no") as info:
        build_command("s", action, **keywords)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("keywords", "error", "text"),
    [
        ({"params": [8]}, TypeError, "must be a mapping of names to numbers"),
        ({"params": {"hidden": "eight"}}, TypeError, "'hidden': 'eight' is not a number"),
        ({"params": {"hidden": True}}, TypeError, "is not a number"),
        ({"params": {"hidden": float("nan")}}, ValueError, "'hidden': nan is not finite"),
        ({"blend_steps": 2.7}, ValueError, "blend_steps must be a whole number >= 0, not 2.7"),
        ({"blend_steps": -5}, ValueError, "not -5"),
        ({"blend_steps": "abc"}, ValueError, "not 'abc'"),
        ({"blend_mode": "sideways"}, ValueError, "choose from residual, convex"),
        ({"alpha_schedule": "zigzag"}, ValueError, "choose from linear, cosine, sigmoid"),
    ],
)
def test_malformed_germinate_fields_get_a_clear_error(
    keywords: dict[str, object], error: type[Exception], text: str
) -> None:
    """Malformed params, blend modes and schedules are refused in words, not a bare Python
    error from deep inside."""
    with pytest.raises(error) as info:
        build_command("s", "germinate", blueprint="residual_mlp", **keywords)
    assert text in str(info.value)


def test_well_formed_keywords_build_the_command() -> None:
    """Every keyword germinate takes lands in its field; a numeric string or a one-element
    tensor is a number, and an enum's own value is taken as well as its name."""
    cmd = build_command(
        "s", "germinate", blueprint="residual_mlp", params={"hidden": 8}, blend_mode="convex",
        alpha_schedule="cosine", blend_steps=40,
    )  # fmt: skip
    g = cmd.germinate
    assert (g.blueprint, dict(g.params), g.blend_mode, g.alpha_schedule, g.blend_steps) == (
        "residual_mlp", {"hidden": 8.0}, pb.BLEND_MODE_CONVEX, pb.ALPHA_SCHEDULE_COSINE, 40,
    )  # fmt: skip


def test_numbers_in_other_forms_and_enum_values_are_taken() -> None:
    """What ``float()`` reads as a finite number is a parameter (YAML and argparse give
    strings); a blend mode or schedule may be given by its protobuf value."""
    import torch

    cmd = build_command(
        "s", "germinate", blueprint="residual_mlp", params={"hidden": "8", "lr": torch.tensor(0.5)},
        blend_mode=pb.BLEND_MODE_CONVEX, alpha_schedule=pb.ALPHA_SCHEDULE_SIGMOID, blend_steps=6.0,
    )  # fmt: skip
    g = cmd.germinate
    assert dict(g.params) == {"hidden": 8.0, "lr": 0.5}
    assert (g.blend_mode, g.alpha_schedule, g.blend_steps) == (
        pb.BLEND_MODE_CONVEX, pb.ALPHA_SCHEDULE_SIGMOID, 6,
    )  # fmt: skip
