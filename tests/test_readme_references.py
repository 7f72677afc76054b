"""Every error message that sends the user to a README section names one that exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"""README\s+(?:section\s+)?(['"\u2018\u201c])(.+?)['"\u2019\u201d]""")


def readme_headings() -> set[str]:
    headings, fenced = set(), False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced  # a `# comment` in a shell block is no heading
        elif not fenced and re.match(r"#{1,6} ", line):
            headings.add(line.lstrip("#").strip())
    return headings


def references() -> list[tuple[str, int, str]]:
    found = []
    for folder in ("tasks", "flows", "models", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for match in REFERENCE.finditer(line):
                    found.append((path.relative_to(REPO).as_posix(), number, match.group(2)))
    return found


def test_the_scan_finds_the_references_it_must_check() -> None:
    assert ("tasks/tracking.py", "Tracking server (PostgreSQL)") in {(path, name) for path, _, name in references()}


def test_every_readme_section_named_in_the_code_exists() -> None:
    headings = readme_headings()
    missing = [f"{path}:{line}: README '{name}'" for path, line, name in references() if name not in headings]
    assert missing == [], f"no such heading in README.md (headings: {sorted(headings)})"
