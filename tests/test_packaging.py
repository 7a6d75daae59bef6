"""README's two set-up commands are the whole set-up: .ci/run runs the test line verbatim, and
the dependencies say what they promise (matplotlib only in the [plot] extra)."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _readme_commands() -> list:
    """The indented one-line commands of README's first section (before the first '##')."""
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("\n## ")]
    return [line.strip() for line in head.splitlines() if line.startswith("    ") and line.strip()]


def test_readme_has_the_two_setup_commands():
    commands = _readme_commands()
    assert 'pip install . && kernelgpt chat' in commands
    assert 'pip install ".[test]" && python -m pytest' in commands


def test_ci_runs_the_readme_test_line_verbatim():
    test_line = next(c for c in _readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_line in [line.strip() for line in ci]
    assert ci[-1].strip() == test_line  # the last thing CI does


def test_dependencies():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [re.split(r"[<>=!~ ]", d)[0].lower() for d in meta["dependencies"]]
    assert "matplotlib" not in deps and "jinja2" in deps
    extras = meta["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    assert any(d.startswith("pexpect") for d in extras["test"])
    assert any(d.startswith("pytest") for d in extras["test"])
