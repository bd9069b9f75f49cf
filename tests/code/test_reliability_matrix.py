"""docs/reliability.md is a contract: each row names a test, and that test exists and is collected."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MATRIX = REPO_ROOT / "docs" / "reliability.md"
REFERENCE = re.compile(r"`((?:code|data|model|e2e)/test_\w+\.py)(?:::(\w+)(\[[^\]`]+\])?)?`")


def rows(section: str) -> list[str]:
    text = MATRIX.read_text(encoding="utf-8").split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [line for line in text.splitlines() if re.match(r"\| [A-Z]?\d+ \|", line)]


def test_the_matrix_has_the_rows_it_promises_and_each_names_a_test():
    bad_inputs, kills = rows("Bad inputs"), rows("Kill points")
    assert len(bad_inputs) >= 40 and len(kills) >= 4
    for row in bad_inputs + kills + rows("Concurrency and storage"):
        assert REFERENCE.search(row) or "(same test" in row or "same test" in row, row


def test_every_test_the_matrix_names_exists_with_its_parameters():
    references = {match.groups() for match in REFERENCE.finditer(MATRIX.read_text(encoding="utf-8"))}
    assert len(references) > 40
    ids = [f"tests/{path}::{name}{params or ''}" for path, name, params in references if name]
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "-m", "", *sorted(
            {f"tests/{path}" for path, _, _ in references})],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    names = {line.strip() for line in collected.stdout.splitlines()}
    missing = [test for test in ids if test not in names and not any(n.startswith(test + "[") for n in names)]
    assert not missing, f"the matrix names tests that do not exist: {missing}"
