"""One CLI dialect: every command's arguments have help text that says what the input looks like; -o/--out
is the main output and --force its overwrite switch wherever a command writes; overrides are positional
KEY=VALUE; positional placeholders are written one way (UPPER, [OPTIONAL], MANY...)."""

import re

import click
import typer

from helpers.preloaded import run_cli


def _commands():
    from peft_apps.core.cli import _mount_app_commands, app

    _mount_app_commands()
    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append((" ".join(path), cmd))

    walk(root, ["peft-apps"])
    from peft_apps.apps.autore.cli import cli as autore_cli

    walk(typer.main.get_command(autore_cli), ["autore"])
    return out


COMMANDS = _commands()
WRITES_WITHOUT_OUT = {"peft-apps train"}  # writes train.output_dir (a recipe key), with --force


def test_every_argument_has_help_text():
    missing = [f"{name}: {p.name}" for name, cmd in COMMANDS for p in cmd.params
               if not getattr(p, "help", None) and p.name != "help" and not getattr(cmd, "allow_extra_args", False)
               and not (cmd.context_settings or {}).get("allow_extra_args")]
    assert not missing, missing


def test_positional_placeholders_are_written_one_way():
    """Bare UPPER names: the usage line then shows each the same way ({REQUIRED}, [OPTIONAL], MANY...)."""
    style = re.compile(r"^[A-Z][A-Z_=]*( \| [A-Z][A-Z_=]*)?$")
    for name, cmd in COMMANDS:
        for p in cmd.params:
            if isinstance(p, click.Argument):
                assert p.metavar and style.match(p.metavar), f"{name}: {p.name} shows as {p.metavar!r}"
    usage = run_cli(["peft-apps", "score", "--help"]).stdout
    assert "{APP} [KEY=VALUE]..." in usage and "[[" not in usage


def test_outputs_are_dash_o_and_writing_commands_take_force():
    for name, cmd in COMMANDS:
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        outs = [p for p in cmd.params if p.name in ("out", "report")]
        for p in outs:
            assert {"-o", "--out"} <= set(p.opts), f"{name}: its output is {p.opts}"
        if outs or name in WRITES_WITHOUT_OUT:
            assert "--force" in opts, f"{name} writes but has no --force"
        assert "--set" not in opts, f"{name}: overrides are positional KEY=VALUE"


def test_version():
    p = run_cli(["peft-apps", "--version"])
    assert p.returncode == 0 and re.fullmatch(r"peft-apps \d+\.\d+\.\d+\S*\n", p.stdout), p.stdout
