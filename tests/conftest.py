"""Shared fixtures: one real run of the default matrix (Debian's kernels, all arches, HVO on
and off) per test session, through the project's own pytest plugin (harness/pytest_plugin.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import cache, pipeline
from harness.profiles import ARCH_NAMES
from harness.results import Results, Run

DATA = Path(__file__).parent / "data"

# pytester points HOME at its own directory, and the cache follows HOME: without this, each
# pytester session under test fetched Debian's kernels again (80 s for one loong64 kernel).
os.environ.setdefault("HVO_HARNESS_CACHE", str(cache.cache_root()))


@pytest.fixture(scope="session")
def default_matrix(hvo_boot: Callable[..., Run]) -> Results:
    """Every arch with HVO on and off on Debian's kernels, through the hvo-harness pytest
    plugin's hvo_boot fixture (the same boots `pytest --hvo-arch all` makes)."""
    results = pipeline.new_results()
    results.runs = [hvo_boot(name, hvo) for name in ARCH_NAMES for hvo in ("on", "off")]
    return results


def find_run(results: Results, arch: str, hvo: str) -> Run:
    return next(r for r in results.runs if r.arch == arch and r.hvo.requested == hvo)


pytest_plugins = ["pytester"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """`faults: N tried, N handled right` when fault tests ran (tests/fault_suite.py)."""
    from tests import fault_suite

    fault_suite.report_summary(terminalreporter.stats, terminalreporter.write_line)
