"""Each setting is declared once (sections.py): the parser's flags, the TOML keys and the config's fields
of every command are built from the declarations, and agree by name; so does the surface's identity."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from distributed_surface import settings
from distributed_surface.cli import _add_sbatch_flags, build_parser, main
from distributed_surface.config import CONFIGS, SURFACE_IDENTITY, HessianConfig, RunConfig
from distributed_surface.directions import registry
from distributed_surface.directions.base import DirectionKind
from distributed_surface.core.errors import UserError

# The flags of a computing command that are not settings: what to do with the file, not what it holds.
COMMAND_FLAGS = {"help", "config_file", "resume", "overwrite", "no_plot", "no_progress"}


def subparser(command: str):
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return commands.choices[command]


def sbatch_only() -> set[str]:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    _add_sbatch_flags(parser)
    return {a.dest for a in parser._actions}


def config_fields(config) -> set[str]:
    """The names of the fields of a config's sections, read from the dataclasses themselves."""
    instance = config()
    return {f.name for section in fields(config) for f in fields(getattr(instance, section.name))}


@pytest.mark.parametrize("command", ["run", "hessian", "sbatch"])
def test_flags_toml_keys_and_fields_are_one_set(command):
    config = CONFIGS[command]
    actions = {a.dest: a for a in subparser(command)._actions}
    flags = set(actions) - COMMAND_FLAGS - (sbatch_only() if command == "sbatch" else set())
    names = set(settings.settings_of(config))
    assert flags == names == config_fields(config)
    for name in names:  # a setting's flag, TOML key and field agree by name
        assert actions[name].option_strings == [f"--{name.replace('_', '-')}"], name
        for key in (name, name.replace("_", "-")):
            assert set(settings.toml_values({key: "v"}, config, "t.toml")) == {name}
    others = {n for c in CONFIGS.values() for n in settings.settings_of(c)} - names
    for name in others:  # the other command's settings are refused, as any unknown key
        with pytest.raises(UserError, match=f"t.toml: unknown setting {name!r}"):
            settings.toml_values({name: "v"}, config, "t.toml")


def test_a_run_file_given_to_hessian_names_whose_setting_it_is(tmp_path, capsys):
    (tmp_path / "s.toml").write_text('x = "-1:1:3"\n')
    assert main(["hessian", str(tmp_path / "s.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown setting 'x' (a setting of dsurf run, dsurf sbatch, not of this command)" in err


def test_hessian_takes_no_surface_settings(capsys):
    with pytest.raises(UserError, match="unrecognized arguments: --x"):
        build_parser().parse_args(["hessian", "--x", "1:2:3"])
    assert main(["hessian", "--x", "1:2:3"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert {"x", "y", "norm", "chunk_size", "measure", "rank0"}.isdisjoint(settings.settings_of(HessianConfig))
    assert {"top_k", "trace_probes"}.isdisjoint(settings.settings_of(RunConfig))


def test_surface_identity_comes_from_the_declarations():
    declared = tuple(name for name, (_, s) in settings.settings_of(RunConfig).items() if s.identity)
    assert SURFACE_IDENTITY == declared + ("kind",)
    assert set(SURFACE_IDENTITY) == {
        "model", "data", "test_data", "loss", "x", "y", "norm", "ignore", "dir_type", "seed", "max_samples",
        "max_test_samples", "precision", "dtype", "kind", "params", "measure", "hessian_samples", "hessian_params",
        "hf_task", "text_field", "seq_len",
    }  # fmt: skip
    config = RunConfig.build(x="-1:1:3", y="-1:1:3")
    assert config.surface_differences(config.replace(seed=4, batch_size=8, out="b.h5")) == ["seed"]
    assert config.surface_differences(config.replace(to="b.pt", y=None)) == ["y", "kind"]


def test_stored_config_reads_flat_and_by_sections():
    config = RunConfig.build(x="-1:1:3", y="-1:1:3", seed=3, compile=True, plane=None)
    stored = json.loads(config.to_json())
    assert stored["seed"] == 3 and stored["x"] == "-1:1:3" and "problem" not in stored  # flat, as before
    assert RunConfig.from_json(config.to_json()) == config
    sectioned = {"problem": {"model": config.problem.model}, "directions": {"seed": 1}, "evaluation": {"seed": 3}}
    assert RunConfig.from_json(json.dumps(sectioned)).evaluation.seed == 3
    # a file written before the sections: one flat config of both commands' settings
    old = dict(stored, top_k=5, trace_probes=64, density_probes=4, lanczos_steps=60, plane=["b.pt", "c.pt"])
    assert RunConfig.from_json(json.dumps(old)).directions.plane == ("b.pt", "c.pt")
    assert HessianConfig.from_json(json.dumps(old)).hessian.top_k == 5


def test_sbatch_passes_every_setting_on_as_given():
    parse = build_parser().parse_args
    line = ["--plane", "b.pt", "c.pt", "--x=-1:1:3", "--y=-2:2:5", "--compile", "--channels-last=auto", "--seed", "7"]
    given = settings.given_flags(parse(["run", *line]), RunConfig)
    again = settings.command_line(given, RunConfig)
    assert settings.given_flags(parse(["run", *again]), RunConfig) == given
    assert "--plane" in again and "--seed=7" in again and "--compile=True" in again


def test_a_kind_names_declared_settings():
    class Colour(DirectionKind):
        name = "colour"
        settings = ("colour",)

        def make(self, config, problem, base, ndim, device):  # pragma: no cover - never made
            raise AssertionError

    with pytest.raises(UserError, match="'colour', which is not a declared setting"):
        registry.register(Colour)
    assert "colour" not in registry.kinds()


@pytest.mark.parametrize("command", ["compare", "report"])
def test_reading_commands_take_exactly_their_declared_settings(command):
    """dsurf compare and report compute nothing, but their flags too are built from declarations."""
    from distributed_surface.config import READER_CONFIGS

    config = READER_CONFIGS[command]
    actions = {a.dest: a for a in subparser(command)._actions}
    names = set(settings.settings_of(config))
    assert set(actions) - {"help", "surfaces"} == names == config_fields(config)
    for name in names:
        assert actions[name].option_strings == [f"--{name.replace('_', '-')}"], name


def test_reading_commands_check_their_settings():
    from distributed_surface.config import reader_config

    config = reader_config("compare", {"band": True, "label": ["a", "b"], "vmin": 0.5})
    assert config.comparison.band is True and config.comparison.label == ("a", "b") and config.scale.vmin == 0.5
    assert config.comparison.format == "png" and config.scale.log is False  # the declared defaults
    with pytest.raises(UserError, match="--format 'gif': expected one of png, pdf, svg"):
        reader_config("compare", {"format": "gif"})
    with pytest.raises(UserError, match="unknown setting 'x'"):
        reader_config("report", {"x": "-1:1:3"})
