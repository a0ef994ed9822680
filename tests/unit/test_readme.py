"""The README stays short and its links stay true: the docs site's ``mkdocs build --strict``
checks the links between pages under ``docs/``, and this checks the README's, which no build
reads (GitHub renders its relative links as they are)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: A Markdown link or image whose target is inside the repository (no scheme, not a bare anchor).
LOCAL_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def _slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown's toc (MkDocs) makes it; GitHub's is the same for
    headings of words, spaces, hyphens and punctuation."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    headings, in_code = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            headings.append(match.group(1).strip())
    return {_slug(re.sub(r"`", "", heading)) for heading in headings}


def test_the_readme_opens_with_the_two_commands_ci_runs():
    lines = README.read_text().splitlines()
    assert lines[:3] == ["# whisper-api", "", "```sh"]
    assert [line.split("#")[0].strip() for line in lines[3:5]] == ["make run", "make test"]
    assert lines[5] == "```"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.MULTILINE)
    assert re.search(r"^test:.* docs\b", makefile, re.MULTILINE)  # the docs site is built --strict


def test_the_readme_fits_a_screen_or_two():
    assert len(README.read_text().splitlines()) <= 150


def test_every_local_link_of_the_readme_reaches_a_file_and_its_heading():
    links = LOCAL_LINK.findall(README.read_text())
    assert "docs/reference/openapi.md" in links  # the pattern finds the links at all
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and anchor not in _anchors(target):
            broken.append(f"{link}: no such heading in {path}")
    assert broken == []
