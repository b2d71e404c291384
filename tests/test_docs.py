"""What a newcomer reads: the README, docs/ and each recipe's README (links, the answer), --help and --version."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from lmfix import __version__
from lmfix.cli import build_parser, main
from lmfix.cli.common import USAGE

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "recipes").glob("*/README.md"))]
ANSWER = ROOT / "recipes" / "wt2-cpu-long" / "results" / "compare.md"

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def markdown_tables(text: str) -> list[str]:
    """Each table of ``text`` as one block of its consecutive ``| ...`` lines."""
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("| "):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", _FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _links(page: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return [target for target in _LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_every_relative_link_and_image_resolves():
    assert {README, ROOT / "docs" / "design.md", ROOT / "recipes" / "wt2-cpu-long" / "README.md"} <= set(PAGES)
    broken, checked = [], 0
    for page in PAGES:
        for target in _links(page):
            checked += 1
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (anchor and (file.suffix != ".md" or anchor not in _anchors(file))):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert checked > 50 and not broken, broken


def test_the_link_check_sees_a_broken_link_and_a_missing_anchor(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n[ok](#a-title) [gone](nothing.md) ![img](x.png) [bad](#no-such)\n`[code](no.md)`\n")
    assert _links(page) == ["#a-title", "nothing.md", "x.png", "#no-such"]
    assert _anchors(page) == {"a-title"}


def test_the_readme_is_a_front_page_that_opens_with_the_answer():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250
    [group] = [t for t in markdown_tables(ANSWER.read_text(encoding="utf-8")) if t.startswith("| group | variant |")]
    assert group in text and text.index(group) < text.index("## Two commands") < text.index("## Usage")
    assert "](recipes/wt2-cpu-long/README.md)" in text[:text.index(group)]


def test_every_docs_page_opens_with_a_short_summary():
    for page in [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "recipes").glob("*/README.md"))]:
        title, blank, *rest = page.read_text(encoding="utf-8").splitlines()
        summary = rest[:rest.index("")]
        assert title.startswith("# ") and blank == "" and 1 <= len(summary) <= 3, page


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_every_commands_help_opens_with_one_line_and_points_to_the_readme(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps at the terminal's width
    commands = dict(_commands(build_parser()))
    assert {("train",), ("bench", "head"), ("embeddings", "export")} <= set(commands)
    assert "## Usage" in README.read_text(encoding="utf-8") and "README.md, section Usage" in USAGE
    for path, parser in commands.items():
        with pytest.raises(SystemExit):
            main([*path, "--help"])
        out = capsys.readouterr().out
        summary = parser.description.split("\n\n")[0]
        assert "\n" not in summary and len(summary) <= 78 and summary.endswith(".")
        assert f"\n\n{summary}\n" in out and out.rstrip().endswith(USAGE), path
    with pytest.raises(SystemExit):
        main(["--help"])
    assert USAGE in capsys.readouterr().out


def test_version_prints_the_packages_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert exit_.value.code == 0 and capsys.readouterr().out == f"lmfix {project['version']}\n"
    assert __version__ == project["version"]
