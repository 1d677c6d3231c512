"""MkDocs hook: the command-line page, written from ``distributed_surface.cli.build_parser()`` at every
build, so that the page cannot drift from the parser.

The page (``cli.md``) is never a file in the repository: :func:`on_files` adds it to the build's files
before MkDocs reads the navigation, which names it like any other page. Every subcommand gets a
section (``## `dsurf NAME` ``) with its usage line and one list item per argument, whose option strings
are code spans (``tests/test_docs.py`` reads them back and compares them with the parser's).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PAGE = "cli.md"
ROOT = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    """``dsurf``'s parser, imported from this checkout (not from another installed copy)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from distributed_surface.cli import build_parser

    return build_parser()


def _markdown(text: str) -> str:
    """Help text as literal Markdown: characters that would start markup are escaped."""
    text = re.sub(r"([\\`*_\[\]])", r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _arguments(command: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in command._actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]


def _item(command: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = command._get_formatter()
    if action.option_strings:
        names = ", ".join(f"`{name}`" for name in action.option_strings)
        takes = formatter._format_args(action, action.dest.upper()) if action.nargs != 0 else ""
        head = f"{names} `{takes}`" if takes else names
    else:
        head = f"`{formatter._metavar_formatter(action, action.dest)(1)[0]}` (positional)"
    words = _markdown(formatter._expand_help(action)) if action.help else ""
    if action.required and action.option_strings:
        words += " (required)"
    if action.choices and action.metavar is not None:  # else the metavar shows them already
        words += "; one of " + ", ".join(f"`{choice}`" for choice in action.choices)
    return f"- {head}: {words.strip()}" if words.strip() else f"- {head}"


def render() -> str:
    """The page's Markdown."""
    top = parser()
    [commands] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = [
        "# Command line",
        "",
        "<!-- Generated from distributed_surface.cli.build_parser() by docs/hooks/cli_page.py at every build. -->",
        "",
        f"`dsurf` ({_markdown(top.description or '')}) has {len(commands.choices)} commands; "
        "`dsurf COMMAND --help` prints what this page says about each. This page is generated from the "
        "argument parser at every build of the documentation, so it lists every flag there is.",
        "",
    ]
    lines += [f"- [`dsurf {name}`](#dsurf-{name}): {_markdown(summaries.get(name) or '')}" for name in commands.choices]
    for name, command in commands.choices.items():
        usage = command.format_usage().strip()
        lines += ["", f"## `dsurf {name}`", "", _markdown(summaries.get(name) or ""), "", "```text", usage, "```", ""]
        lines += [_item(command, action) for action in _arguments(command)]
    return "\n".join(lines) + "\n"


def on_files(files, config):
    """Add the generated page to the build, before the navigation is read."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files
