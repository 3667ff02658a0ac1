"""The README and docs/: links that lead somewhere, a README that stays a page, and the
quick start's test command that CI runs word for word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
README_MOST_LINES = 250
# [text](target) and ![alt](target), alt and text possibly over several lines.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`]*`")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = CODE_BLOCK.sub("", page.read_text())
    return {github_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}


def links(page: Path) -> list[str]:
    return LINK.findall(CODE_SPAN.sub("", CODE_BLOCK.sub("", page.read_text())))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_leads_somewhere(page: Path) -> None:
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s): and mailto: leave the repository
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}: no such file"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}: no such heading"


def test_the_readme_is_a_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MOST_LINES


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {target.partition("#")[0] for target in links(README)}
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in linked, page.name


def test_the_readme_shows_both_pictures() -> None:
    linked = set(links(README))
    for picture in ("docs/slack-failure.png", "docs/status-page.png"):
        assert picture in linked
        assert (REPO_ROOT / picture).read_bytes().startswith(b"\x89PNG")


def quick_start() -> list[str]:
    """The shell commands of the README's quick start, in order."""
    section = README.read_text().split("## Quick start\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)


def test_the_quick_start_is_two_commands_in_two_venvs() -> None:
    serve, test = quick_start()
    assert "\n" not in serve and "\n" not in test
    assert serve.startswith("python3.11 -m venv .venv && . .venv/bin/activate && pip install . ")
    assert "jobserv-bridge serve --config config.example.toml" in serve
    assert test.startswith("python3.11 -m venv .venv-test && . .venv-test/bin/activate ")
    assert test.endswith("python -m pytest")


def test_ci_runs_the_readmes_test_command_as_written() -> None:
    _, test = quick_start()
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci
    assert "/.venv-test/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
