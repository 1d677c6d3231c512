"""The documentation: the README stays a front door, every relative link in it and in docs/ leads to a
file, the site builds with ``mkdocs build --strict`` (as CI builds it), and the command-line page, which
a hook writes from the parser at every build, lists every flag of every command."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distributed_surface.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 150


def cli_page_hook():
    spec = importlib.util.spec_from_file_location("_dsurf_cli_page_hook", DOCS / "hooks" / "cli_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def relative_links(text: str) -> list[str]:
    """The targets of the Markdown links and images in ``text`` that are neither URLs nor anchors on the
    same page (code blocks and code spans left out)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move the details into docs/"
    assert any(link.startswith("docs/") for link in relative_links(text)), "the README links into docs/"


def test_every_relative_link_leads_to_a_file():
    generated = DOCS / cli_page_hook().PAGE  # written by the build, never a file in the repository
    assert not generated.exists(), f"{generated} is generated at every build; do not commit it"
    broken = []
    for page in markdown_files():
        for link in relative_links(page.read_text()):
            target = (page.parent / link.split("#")[0]).resolve()
            if not target.exists() and target != generated.resolve():
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_link_finder_sees_links_and_skips_code():
    text = "[a](x.md) ![b](figures/y.png) [c](https://example.org) [d](#here) `[e](z.md)`\n```\n[f](w.md)\n```\n"
    assert relative_links(text) == ["x.md", "figures/y.png"]


def parser_flags() -> dict[str, set[str]]:
    """Every command's option strings and positional names, as the parser has them (``--help`` aside)."""
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {}
    for name, command in commands.choices.items():
        names = set()
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            names.update(action.option_strings or [action.metavar or action.dest])
        flags[name] = names
    return flags


def page_flags(page: str) -> dict[str, set[str]]:
    """Every command's section of the generated page, and the names its argument items give in code."""
    sections = re.split(r"^## `dsurf (\S+)`$", page, flags=re.M)
    flags = {}
    for name, body in zip(sections[1::2], sections[2::2]):
        names = set()
        for item in re.findall(r"^- (.*)$", body, flags=re.M):
            head = item.split(": ", 1)[0]
            spans = re.findall(r"`([^`]+)`", head)
            options = [s for s in spans if s.startswith("-")]
            names.update(options or spans[:1])
        flags[name] = names
    return flags


def test_cli_page_lists_every_flag_of_every_command():
    expected = parser_flags()
    assert {"run", "info", "plot", "export", "hessian", "sbatch"} <= set(expected)
    assert "--template" in expected["sbatch"] and "--status" in expected["info"]
    assert page_flags(cli_page_hook().render()) == expected


def test_cli_page_check_notices_a_missing_flag():
    page = cli_page_hook().render()
    without = re.sub(r"^- `--template`.*\n", "", page, flags=re.M)
    assert without != page and page_flags(without) != parser_flags()


def test_mkdocs_build_strict(tmp_path):
    """What CI runs. Skipped only where mkdocs is not installed (launch/setup.sh installs it; in CI it
    must be there)."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must build the docs, and mkdocs or mkdocs-material is not installed (launch/setup.sh installs them)")
        pytest.skip("mkdocs and mkdocs-material are not installed (launch/setup.sh installs them)")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    cli_html = (site / "cli" / "index.html").read_text()
    for flags in parser_flags().values():
        for flag in flags:
            assert f"<code>{flag}</code>" in cli_html, flag
    assert (site / "figures" / "tutorial_trajectory.png").is_file()


def test_the_notebook_page_runs_cell_by_cell(tmp_path, monkeypatch):
    """docs/notebook.md's ``python`` cells, in order, in one namespace (``py`` cells are shown, not run:
    they need a cluster's files)."""
    cells = re.findall(r"^```python\n(.*?)^```", (DOCS / "notebook.md").read_text(), flags=re.S | re.M)
    assert len(cells) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in cells:
        exec(compile(cell, "docs/notebook.md", "exec"), namespace)  # noqa: S102 - the page's own code
    assert namespace["surface"].status == "complete" and (tmp_path / "mlp_contour.png").stat().st_size > 0
    assert 0 < namespace["centre"] < namespace["loss"].max()
