"""Shared fixtures: one real run of the default matrix (Debian's kernels, all arches, HVO on
and off) per test session, through the same pipeline the CLI uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import pipeline
from harness.profiles import ARCH_NAMES, get_profile
from harness.results import Results, Run

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def default_matrix(tmp_path_factory: pytest.TempPathFactory) -> Results:
    out = tmp_path_factory.mktemp("matrix")
    results = pipeline.new_results()
    for name in ARCH_NAMES:
        profile = get_profile(name)
        kernel = pipeline.prepare_kernel(profile, "debian")
        env = pipeline.prepare_environment(profile)
        for hvo in ("on", "off"):
            results.runs.append(pipeline.boot(profile, kernel, env, hvo, out))
    results.write(out / "results.json")
    return results


def find_run(results: Results, arch: str, hvo: str) -> Run:
    return next(r for r in results.runs if r.arch == arch and r.hvo.requested == hvo)
