"""docs/testing.md's example is examples/test_approval.py, and it passes as a user runs it:
``pytest examples/test_approval.py``, with the fixtures of stepd's pytest plugin."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "test_approval.py"


def test_the_docs_show_the_example_file() -> None:
    doc = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    body = EXAMPLE.read_text().split('"""', 2)[2].lstrip("\n")  # without the docstring
    assert body in blocks


@pytest.mark.slow
def test_the_example_tests_pass_in_well_under_a_second_each(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-o",
            "addopts=",  # not this repository's -n auto
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            str(EXAMPLE.relative_to(ROOT)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cases = ET.parse(report).getroot().iter("testcase")
    times = {str(case.get("name")): float(case.get("time", "0")) for case in cases}
    assert sorted(times) == [
        "test_after_48_hours_the_manager_decides",
        "test_the_reviewer_approves_in_time",
        "test_without_any_answer_the_request_expires",
    ]
    # Each waits 5 to 72 hours of the environment's time; a bound, not a benchmark.
    slow = {name: seconds for name, seconds in times.items() if seconds > 3}
    assert not slow, f"took seconds of wall time: {slow}"
