"""The README and docs/ stay true: commands, the example, links, test references."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def section(text: str, heading: str) -> str:
    """The text of a ``## heading`` section."""
    start = text.index(f"## {heading}\n")
    following = text.find("\n## ", start + 1)
    return text[start : following if following != -1 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_quickstart_has_the_two_commands_and_ci_runs_the_test_command() -> None:
    commands = [
        block.strip() for block in code_blocks(section(README.read_text(), "Quickstart"), "sh")
    ]

    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e '.[server]' && "
        ".venv/bin/python examples/run_demo.py",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest",
    ]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines, ".ci/run must run the README's test command verbatim"


def test_readme_example_is_examples_quickstart() -> None:
    example = code_blocks(section(README.read_text(), "Example"), "python")[0]
    source = (ROOT / "examples" / "quickstart.py").read_text()
    body = source.split('"""', 2)[2].lstrip("\n")  # without the module docstring

    assert example == body


def test_readme_opens_with_one_sentence_and_states_the_guarantees() -> None:
    text = README.read_text()
    first_paragraph = text.split("\n\n")[1]
    assert first_paragraph.startswith("stepd is ")
    assert first_paragraph.count(". ") == 0 and first_paragraph.rstrip().endswith(".")
    guarantees = section(text, "Guarantees")
    for phrase in ("at least once", "exactly once", "synchronous=FULL", "2 MiB"):
        assert phrase in guarantees


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target:
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_referenced_tests_exist(doc: Path) -> None:
    """``tests/x.py::test_a`` and a following ``::test_b`` name real tests."""
    current: Path | None = None
    for path, name in re.findall(r"(tests/[\w/]+\.py)?::(test_\w+)", doc.read_text()):
        if path:
            current = ROOT / path
        assert current is not None, f"{doc.name}: ::{name} without a file before it"
        assert re.search(rf"\bdef {name}\(", current.read_text()), f"{current} has no {name}"
    for path in re.findall(r"`(tests/[\w/]+\.py)`", doc.read_text()):
        assert (ROOT / path).exists(), f"{doc.name} mentions missing {path}"


def test_operating_runs_snippets_are_the_example_s_code() -> None:
    """docs/operating-runs.md shows code that examples/operating_runs.py runs (and
    tests/e2e/test_examples.py::test_operating_runs_example checks)."""
    import textwrap

    doc = (ROOT / "docs" / "operating-runs.md").read_text()
    example = textwrap.dedent((ROOT / "examples" / "operating_runs.py").read_text())
    lines = [line.strip() for line in example.splitlines()]
    blocks = code_blocks(doc, "python")
    assert len(blocks) == 5
    for block in blocks:
        wanted = [line.strip() for line in block.strip().splitlines()]
        starts = [i for i, line in enumerate(lines) if line == wanted[0]]
        assert any(lines[i : i + len(wanted)] == wanted for i in starts), block
