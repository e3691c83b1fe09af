"""`make bench`: speed, measured side by side in one run, with repetitions and medians.

(a) Harness overhead: one boot and its scenarios through the harness (pipeline.boot, judging
    included) against the bare QEMU command the harness itself ran for that boot (Run.qemu_argv),
    run alternately, both on the memory pool's files (warmed by an untimed boot); the ratio of
    the medians. Beside them the same boot through the harness on fresh RAM (--fresh-memory).
(b) The default matrix (Debian's kernels, every arch, HVO on and off) through pytest and the
    plugin, serial and with `-n 2`; the wall time of each.
(d) The virtme-ng backend against the QEMU backend: the same tree kernel (x86_64 debug+vng,
    built once and cached) and the same plan, booted through pipeline.boot with backend "qemu"
    and "vng" alternately; medians of each and their ratio (vng / qemu).
(c) One bisect step on an unchanged config (`--only bisect-step`, and part of the whole bench):
    `hvo-harness bisect-run --arch riscv64 --variant debug` after a one-commit doc change, ccache
    and the step's incremental build directory warm; start to exit, median and spread.

Prints a table and writes a bench JSON (default hvo-results/bench.json)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import guest_memory, pipeline  # noqa: E402
from harness.profiles import get_profile  # noqa: E402


def _bare_argv(argv: list[str], files: list[Path] | None) -> list[str]:
    """The harness's argv with each node's mem-path= replaced by FILES (the bare command's own
    memory files from the pool: what the harness's boot found, the bare one finds too)."""
    if files is None:
        return argv
    out = []
    for arg in argv:
        match = re.search(r"memory-backend-file,id=mem(\d+),", arg)
        if match:
            arg = re.sub(r"mem-path=[^,]+", f"mem-path={files[int(match.group(1))]}", arg)
        out.append(arg)
    return out


def overhead(arch: str, repeat: int, work: Path) -> dict[str, object]:
    """(a): harness against bare QEMU, both on the memory pool's files, warmed by one untimed
    boot first (the pool's effect is not the harness's overhead); and, beside them, the same
    boot through the harness on fresh RAM (--fresh-memory), which is what the pool saves."""
    profile = get_profile(arch)
    kernel = pipeline.prepare_kernel(profile, "debian")
    env = pipeline.prepare_environment(profile)
    harness_seconds: list[float] = []
    bare_seconds: list[float] = []
    fresh_seconds: list[float] = []
    argv: list[str] = []
    warm_up = work / "overhead-warm-up"
    run = pipeline.boot(profile, kernel, env, "on", warm_up)
    if run.ended != "done":
        raise SystemExit(f"bench: the {arch} boot did not finish ({run.verdict_reason})")

    def harness_boot(out: Path) -> list[str]:
        started = time.monotonic()
        run = pipeline.boot(profile, kernel, env, "on", out)
        harness_seconds.append(time.monotonic() - started)
        if run.ended != "done":
            raise SystemExit(f"bench: the {arch} boot did not finish ({run.verdict_reason})")
        return run.qemu_argv

    def bare_boot(harness_argv: list[str], ran_in: Path, out: Path) -> list[str]:
        # The command the harness ran, bare, on the pool's files as the harness's was: QEMU
        # until the guest powers off, output to a file (as the harness logs it).
        out.mkdir(parents=True, exist_ok=True)
        with guest_memory.take(profile.node_mem_mib) as backing:
            argv = [arg.replace(str(ran_in), str(out)) for arg in _bare_argv(harness_argv, backing.files)]
            started = time.monotonic()
            with open(out / "bare.console.log", "wb") as console:
                subprocess.run(argv, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               timeout=600, check=False)
            bare_seconds.append(time.monotonic() - started)
        return argv

    last_argv, last_out = run.qemu_argv, warm_up
    for index in range(repeat):
        out = work / f"overhead-{index}"
        # ABBA: the harness first in even pairs, the bare command first in odd ones, so that
        # neither always has the host's quieter (or busier) moment of the pair.
        if index % 2 == 0:
            last_argv, last_out = harness_boot(out), out
            argv = bare_boot(last_argv, last_out, out / "bare")
        else:
            argv = bare_boot(last_argv, last_out, out / "bare")
            last_argv, last_out = harness_boot(out), out
    # After the pairs, not between them: the memory a fresh boot frees goes back to this
    # machine's hypervisor (free page reporting) in the background, slowing whatever boots next.
    for index in range(repeat):
        started = time.monotonic()
        pipeline.boot(profile, kernel, env, "on", work / f"overhead-fresh-{index}", fresh_memory=True)
        fresh_seconds.append(time.monotonic() - started)
    harness_median = statistics.median(harness_seconds)
    bare_median = statistics.median(bare_seconds)
    return {
        "arch": arch,
        "repeat": repeat,
        "harness_seconds": [round(s, 2) for s in harness_seconds],
        "bare_qemu_seconds": [round(s, 2) for s in bare_seconds],
        "fresh_memory_seconds": [round(s, 2) for s in fresh_seconds],
        "harness_median": round(harness_median, 2),
        "bare_qemu_median": round(bare_median, 2),
        "fresh_memory_median": round(statistics.median(fresh_seconds), 2),
        "ratio": round(harness_median / bare_median, 3),
        "bare_command": shlex.join(argv),
        "order": "ABBA: harness first in even pairs, bare first in odd ones",
    }


def backends(repeat: int, work: Path, variant: str = "debug+vng") -> dict[str, object]:
    """(d): one tree kernel, booted through each backend in turn (qemu, vng, qemu, vng, ...),
    so a slower or busier moment of the host falls on both alike."""
    profile = get_profile("x86_64")
    spec = pipeline.TreeBuild(variants=(variant,))
    kernel = pipeline.build_kernel(profile, spec, variant, pipeline.resolve_source(spec))
    env = pipeline.prepare_environment(profile)
    seconds: dict[str, list[float]] = {"qemu": [], "vng": []}
    verdicts: dict[str, list[str]] = {"qemu": [], "vng": []}
    for index in range(repeat):
        for backend in ("qemu", "vng"):
            started = time.monotonic()
            out = work / f"backend-{backend}-{index}"
            run = pipeline.boot(profile, kernel, env, "on", out, backend=backend)
            seconds[backend].append(time.monotonic() - started)
            if run.ended != "done":
                raise SystemExit(f"bench: the {backend} boot of {variant} did not finish "
                                 f"({run.verdict_reason})")
            verdicts[backend].append(run.verdict)
    medians = {backend: statistics.median(values) for backend, values in seconds.items()}
    return {
        "kernel": f"x86_64 {variant} ({kernel.info.release})", "repeat": repeat,
        "qemu_seconds": [round(v, 2) for v in seconds["qemu"]],
        "vng_seconds": [round(v, 2) for v in seconds["vng"]],
        "qemu_median": round(medians["qemu"], 2), "vng_median": round(medians["vng"], 2),
        "ratio_vng_over_qemu": round(medians["vng"] / medians["qemu"], 3),
        "verdicts": verdicts,
    }


def matrix(jobs: int | None, repeat: int, work: Path) -> dict[str, object]:
    seconds = []
    summaries = []
    for index in range(repeat):
        argv = [sys.executable, "-m", "pytest", "--hvo-arch", "all", "-q", "-p", "no:cacheprovider",
                f"--basetemp={work / f'matrix-{jobs or 1}-{index}'}", "-o", "addopts="]
        if jobs:
            argv += ["-n", str(jobs)]
        started = time.monotonic()
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        seconds.append(time.monotonic() - started)
        summary = (done.stdout.strip().splitlines() or [""])[-1].strip("= ")
        # A failing matrix is no timing: a boot that died early is fast.
        if done.returncode != 0:
            raise SystemExit(f"bench: the default matrix did not pass (pytest exit {done.returncode}: "
                             f"{summary}); its time would not compare. See why: pytest --hvo-arch all")
        summaries.append(summary)
    return {"jobs": jobs or 1, "repeat": repeat, "seconds": [round(s, 1) for s in seconds],
            "median": round(statistics.median(seconds), 1), "pytest_summaries": summaries}


def bisect_step(repeat: int, arch: str = "riscv64", variant: str = "debug") -> dict[str, object]:
    """(c): a clone of linux-source at a fixed path in the cache (so its incremental build
    directory and ccache stay warm from one bench to the next), one untimed step to warm them,
    then REPEAT times: commit a doc change, time `bisect-run` from start to exit."""
    from harness.cache import cache_dir

    base = pipeline.source_tree(None)
    tree = cache_dir("bench") / "bisect-tree"
    base_commit = subprocess.run(["git", "-C", str(base), "rev-parse", "HEAD"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    if not (tree / ".git").exists():
        subprocess.run(["git", "clone", "-q", "--shared", str(base), str(tree)], check=True)
    git = ["git", "-C", str(tree), "-c", "user.name=bench", "-c", "user.email=bench@localhost",
           "-c", "gc.auto=0"]
    subprocess.run([*git, "fetch", "-q", str(base), base_commit], check=True)
    subprocess.run([*git, "checkout", "-q", "--detach", base_commit], check=True)
    subprocess.run([*git, "clean", "-qfdx"], check=True)
    out = cache_dir("bench") / "bisect-steps"
    argv = [sys.executable, "-m", "harness.cli", "bisect-run", "--arch", arch, "--variant", variant,
            "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def step() -> tuple[float, int]:
        started = time.monotonic()
        done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, env=env)
        seconds = time.monotonic() - started
        if done.returncode not in (0, 1):  # good or bad: a step that built and booted
            raise SystemExit(f"bench: bisect-run exited {done.returncode}: "
                             f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
        return seconds, done.returncode

    doc = tree / "Documentation" / "mm" / "hugetlbfs_reserv.rst"

    def doc_change(label: str) -> None:
        doc.write_text(doc.read_text() + f"\n.. bench: doc change {label}\n")
        subprocess.run([*git, "commit", "-q", "-a", "-m", f"bench: doc change {label}"], check=True)

    # The warm-up is itself a step on a new commit: the base commit alone is a hit in the
    # ordinary build cache and would leave the incremental directory cold for the first timed
    # step (seen: 922 s for it, 46 s for the next).
    doc_change("warm-up")
    warm, _ = step()
    seconds: list[float] = []
    for index in range(repeat):
        doc_change(str(index))
        seconds.append(step()[0])
    subprocess.run([*git, "checkout", "-q", "--detach", base_commit], check=True)
    return {"arch": arch, "variant": variant, "repeat": repeat, "warm_up_seconds": round(warm, 1),
            "seconds": [round(s, 1) for s in seconds], "median": round(statistics.median(seconds), 1),
            "min": round(min(seconds), 1), "max": round(max(seconds), 1), "target_seconds": 180}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="x86_64", help="arch of the overhead boot (default x86_64)")
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", "6")),
                        help="repetitions of the overhead boot pair (default 6, ABBA)")
    parser.add_argument("--matrix-repeat", type=int, default=int(os.environ.get("BENCH_MATRIX_REPEAT", "2")),
                        help="repetitions of each matrix timing (default 2)")
    parser.add_argument("--json", type=Path, default=REPO / "hvo-results" / "bench.json")
    parser.add_argument("--only", choices=("bisect-step", "backends", "speed"),
                        help="run only this measurement (bisect-step: one bisect step, riscv64 debug; "
                             "backends: vng against qemu on the x86_64 debug+vng kernel; speed: the "
                             "harness's overhead and the default matrix)")
    parser.add_argument("--backend-repeat", type=int,
                        default=int(os.environ.get("BENCH_BACKEND_REPEAT", "3")),
                        help="boots per backend (default 3)")
    parser.add_argument("--bisect-repeat", type=int, default=int(os.environ.get("BENCH_BISECT_REPEAT", "3")),
                        help="timed bisect steps (default 3)")
    args = parser.parse_args()
    if args.only == "bisect-step":
        return _bisect_step_only(args)
    if args.only == "backends":
        return _backends_only(args)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="hvo-bench-") as tmp:
        work = Path(tmp)
        console.print(f"[dim]> overhead: {args.arch}, {args.repeat} x (harness, bare QEMU)[/]")
        over = overhead(args.arch, args.repeat, work)
        console.print(f"[dim]> default matrix: serial and -n 2, {args.matrix_repeat} x each[/]")
        serial = matrix(None, args.matrix_repeat, work)
        parallel = matrix(2, args.matrix_repeat, work)
        compared: dict[str, object] = {}
        if args.only != "speed":
            console.print(f"[dim]> backends: qemu and vng, {args.backend_repeat} x each, alternated[/]")
            compared = backends(args.backend_repeat, work)
    table = Table(title="hvo-harness bench (medians)")
    for column in ("measure", "median", "runs", "note"):
        table.add_column(column)
    table.add_row(f"boot via harness ({args.arch}, hvo=on)", f"{over['harness_median']} s",
                  ", ".join(map(str, over["harness_seconds"])), "pipeline.boot, judging included")
    table.add_row("same boot, bare QEMU", f"{over['bare_qemu_median']} s",
                  ", ".join(map(str, over["bare_qemu_seconds"])), "the argv the harness ran, same pool files")
    table.add_row("overhead ratio", str(over["ratio"]), "", "target <= 1.05")
    table.add_row("same boot via harness, fresh RAM", f"{over['fresh_memory_median']} s",
                  ", ".join(map(str, over["fresh_memory_seconds"])), "--fresh-memory")
    table.add_row("default matrix, serial", f"{serial['median']} s", ", ".join(map(str, serial["seconds"])),
                  "pytest --hvo-arch all")
    table.add_row("default matrix, -n 2", f"{parallel['median']} s", ", ".join(map(str, parallel["seconds"])),
                  "target <= 30 s")
    step: dict[str, object] = {}
    if compared:
        _backend_rows(table, compared)
    if args.only != "speed":
        console.print(f"[dim]> bisect step: riscv64 debug, {args.bisect_repeat} x[/]")
        step = bisect_step(args.bisect_repeat)
        table.add_row("bisect step, doc change", f"{step['median']} s",
                      ", ".join(map(str, step["seconds"])),
                      f"spread {step['min']}-{step['max']} s; target < 180 s")
    console.print(table)
    document = {
        "schema": "hvo-harness-bench/1",
        "bisect_step": step,
        "host": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "overhead": over,
        "matrix_serial": serial,
        "matrix_n2": parallel,
        "backends": compared,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"bench JSON: {args.json}")
    return 0



def _runs(values: object) -> str:
    return ", ".join(map(str, values)) if isinstance(values, list) else str(values)


def _backend_rows(table: Table, compared: dict[str, object]) -> None:
    table.add_row(f"boot, qemu backend ({compared['kernel']})", f"{compared['qemu_median']} s",
                  _runs(compared["qemu_seconds"]), "pipeline.boot, backend qemu")
    table.add_row("same kernel, vng backend", f"{compared['vng_median']} s",
                  _runs(compared["vng_seconds"]), "pipeline.boot, backend vng")
    table.add_row("vng / qemu", str(compared["ratio_vng_over_qemu"]), "", "alternated boots")


def _backends_only(args: argparse.Namespace) -> int:
    """`--only backends`: vng against qemu, merged into the bench JSON (others kept)."""
    console = Console()
    console.print(f"[dim]> backends: qemu and vng, {args.backend_repeat} x each, alternated[/]")
    with tempfile.TemporaryDirectory(prefix="hvo-bench-") as tmp:
        compared = backends(args.backend_repeat, Path(tmp))
    table = Table(title="hvo-harness bench: backends (medians)")
    for column in ("measure", "median", "runs", "note"):
        table.add_column(column)
    _backend_rows(table, compared)
    console.print(table)
    document = json.loads(args.json.read_text()) if args.json.is_file() else {"schema": "hvo-harness-bench/1"}
    document["backends"] = compared
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"bench JSON: {args.json}")
    return 0


def _bisect_step_only(args: argparse.Namespace) -> int:
    """`--only bisect-step`: that one measurement, merged into the bench JSON (others kept)."""
    console = Console()
    console.print(f"[dim]> bisect step: riscv64 debug, {args.bisect_repeat} x[/]")
    step = bisect_step(args.bisect_repeat)
    console.print(f"bisect step after a doc change: median {step['median']} s "
                  f"(runs {', '.join(map(str, step['seconds']))}; spread {step['min']}-{step['max']} s; "
                  f"warm-up {step['warm_up_seconds']} s; target < 180 s)")
    document = json.loads(args.json.read_text()) if args.json.is_file() else {"schema": "hvo-harness-bench/1"}
    document["bisect_step"] = step
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"bench JSON: {args.json}")
    return 0 if step["median"] < step["target_seconds"] else 1


if __name__ == "__main__":
    sys.exit(main())
