"""Samplers by A1111 name -> diffusers schedulers built from the model's own config."""

from __future__ import annotations

import importlib.util

import pytest

from scenecraft.diagnostics import DiagnosticError
from scenecraft.render.samplers import SAMPLER_TABLE, SAMPLERS, make_scheduler
from tests._fixtures_render import tiny_pipe

HAS_SCIPY = importlib.util.find_spec("scipy") is not None


def test_the_common_a1111_names_are_known() -> None:
    for name in [
        "Euler",
        "Euler a",
        "DPM++ 2M",
        "DPM++ 2M Karras",
        "DPM++ SDE Karras",
        "DDIM",
        "UniPC",
        "PNDM",
        "LMS",
        "Heun",
        "DPM2",
    ]:
        assert name in SAMPLERS


@pytest.mark.parametrize("name", [n for n in SAMPLERS if SAMPLER_TABLE[n].needs is None])
def test_every_sampler_builds_from_the_model_config(name: str) -> None:
    config = tiny_pipe().scheduler.config
    scheduler = make_scheduler(name, config)
    assert type(scheduler).__name__ == SAMPLER_TABLE[name].scheduler
    # the model's schedule is kept, the sampler's options applied
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == pytest.approx(0.012)
    for key, value in SAMPLER_TABLE[name].options.items():
        assert scheduler.config[key] == value
    scheduler.set_timesteps(4)


def test_karras_variants_differ_from_plain() -> None:
    config = tiny_pipe().scheduler.config
    plain = make_scheduler("DPM++ 2M", config)
    karras = make_scheduler("DPM++ 2M Karras", config)
    assert not plain.config.use_karras_sigmas and karras.config.use_karras_sigmas
    plain.set_timesteps(10)
    karras.set_timesteps(10)
    assert plain.timesteps.tolist() != karras.timesteps.tolist()


def test_lms_needs_scipy() -> None:
    config = tiny_pipe().scheduler.config
    if HAS_SCIPY:
        assert type(make_scheduler("LMS", config)).__name__ == "LMSDiscreteScheduler"
        return
    with pytest.raises(DiagnosticError) as exc:
        make_scheduler("LMS", config)
    assert exc.value.errors[0].code == "sampler-unavailable"
    assert "pip install scipy" in (exc.value.errors[0].help or "")


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("Eular a", "Euler a"), ("dpm++ 2m karras", "DPM++ 2M Karras"), ("UniPc", "UniPC")],
)
def test_unknown_sampler_suggests_the_closest(name: str, suggestion: str) -> None:
    with pytest.raises(DiagnosticError) as exc:
        make_scheduler(name, tiny_pipe().scheduler.config)
    d = exc.value.errors[0]
    assert d.code == "unknown-sampler" and d.message == f"unknown sampler `{name}`"
    assert d.help == f"did you mean `{suggestion}`?"
    assert "DPM++ 2M Karras" in d.notes[0]
