"""The LAVA target: LAVA job definitions for the harness's boots, validated with LAVA's own
schema, and a local run of one through LAVA's dispatcher (`lava-run`), judged like every other
target's run.

LavaTarget (harness.targets.Target) runs one exported job through lava-run and brings back
what every target brings back: the guest's KTAP report and the kernel log, read out of the
dispatcher's log (the framed lines the test definition sends), and how the job ended.
pipeline.run_target() then judges it (targets.judged_run: the same judge, source lines,
decoded traces and checks as a QEMU boot) and writes a reproducer for a failed job (the job
and its device dictionary). A job the dispatcher fails (a missing image, a test shell that
timed out) is the test bed's error, never the kernel's pass.

What a job is made of:
- deploy to tmpfs: the kernel QEMU booted (`-kernel ... -append "<the plan's command line>"`,
  the same command line pipeline.boot gives QEMU), a ramdisk (the harness's initramfs with an
  init that gives LAVA a shell instead of running the scenarios itself, `format: cpio.newc`
  with `overlays: {lava: true}`, so the dispatcher puts its test shell into the cpio and needs
  no libguestfs disk), and on riscv64 the OpenSBI firmware (`-bios`);
- boot method qemu (media tmpfs) on LAVA's `qemu` device type, whose device-type template
  (lava-server's device-types/qemu.jinja2) takes the machine from the job's context: arch,
  memory, no_kvm and extra_options (machine, cpu, smp, NUMA nodes, accelerator);
- a test action with an inline test definition that runs guest_scripts/scenarios.sh, prints its
  KTAP, calls lava-test-case once per KTAP result (so LAVA records each scenario: pass, fail or
  skip, as the guest saw it), and then sends the KTAP and the whole kernel log again framed with
  CRCs (hvoh frame / hvoh kmsg, as the harness's console channel does), which `read_back` takes
  out of the dispatcher's log for LavaTarget.

lava-common (LAVA's schemas) and PyYAML are Debian packages in the system python3
(/usr/lib/python3/dist-packages); the project's venv does not see them
(include-system-site-packages = false). So validation and the YAML text are made in one
subprocess of /usr/bin/python3 (LAVA_PYTHON), fed JSON on stdin: the venv stays as it is, and
the jobs are checked by the very code a LAVA server of this Debian release runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import artefacts, guest_helper, initramfs, kmsg, protocol, qemu
from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.guest import GuestOutcome
from harness.judge import KernelFacts
from harness.plan import Plan, make_plan
from harness.profiles import ArchProfile, get_profile
from harness.results import Accel, KernelInfo, Results, Run
from harness.structpage import StructPage
from harness.targets import TargetFacts, TargetOutput

# The interpreter that has Debian's lava-common and python3-yaml (make deps installs them).
LAVA_PYTHON = os.environ.get("HVO_LAVA_PYTHON", "/usr/bin/python3")
LAVA_RUN = "lava-run"
PROMPT = "hvo-lava # "
TESTDEF_NAME = "hvo-scenarios"

# Which arches LAVA's qemu device type (lava-server 2023.01, Debian bookworm) can take, and why
# not where it cannot. The dispatcher's CallQemuAction.validate refuses a job whose context
# arch is not in the device's available_architectures, which the device-type template fixes.
UNSUPPORTED_ARCHES: dict[str, str] = {
    "loongarch64": (
        "LAVA 2023.01's qemu device type (lava-server device-types/qemu.jinja2) has no "
        "loongarch64 in available_architectures, and lava-dispatcher's CallQemuAction rejects a "
        "job whose context arch is not listed there"
    ),
}

# The ramdisk's init: the harness's own init runs the scenarios and powers off; under LAVA the
# dispatcher drives the guest, so this one mounts what the scenarios read and gives LAVA a
# shell on the console, with the prompt the job's boot action waits for.
LAVA_INIT = f"""#!/bin/busybox sh
# PID 1 of the hvo-harness LAVA ramdisk (harness/targets/lava.py): LAVA's test shell runs the scenarios.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp
echo "hvo-lava-init: shell"
export PS1='{PROMPT}'
# A controlling terminal where busybox has cttyhack, so the shell's job control works.
command -v cttyhack >/dev/null && exec setsid cttyhack /bin/sh
exec /bin/sh
"""

# The validation and YAML side, run by LAVA_PYTHON: JSON in ({"jobs": {name: job}, "devices":
# {name: device}}), JSON out ({name: {"yaml": text} | {"error": text}}).
_VALIDATOR = r"""
import json, sys
import yaml
from lava_common.schemas import validate
from lava_common.schemas.device import validate as validate_device
request = json.load(sys.stdin)
answer = {}
for kind, check in (("jobs", validate), ("devices", validate_device)):
    for name, document in request.get(kind, {}).items():
        try:
            check(document) if kind == "devices" else check(document, strict=True)
        except Exception as error:
            path = "/".join(str(p) for p in getattr(error, "path", []) or [])
            answer[name] = {"error": (path + ": " if path else "") + str(error).splitlines()[0]}
            continue
        answer[name] = {"yaml": yaml.safe_dump(document, sort_keys=False, width=1000)}
json.dump(answer, sys.stdout)
"""


@dataclass(frozen=True)
class BootSpec:
    """One boot to turn into a LAVA job: what pipeline.boot gave (or would give) QEMU, and what
    the judge needs to judge the job's log as that boot."""

    name: str  # the boot's stem, 'x86_64-hvo-on'
    profile: ArchProfile  # as booted (qemu.boot_profile): firmware, node layout
    hvo: str
    cmdline: str  # the whole kernel command line: console, profile args, the plan's
    kernel: Path
    kernel_info: KernelInfo
    # QEMU options besides kernel, initrd, command line, console and the results ports.
    machine_args: tuple[str, ...]
    memory_mib: int
    firmware: Path | None  # riscv64: OpenSBI (-bios)
    plan: Plan
    facts: KernelFacts
    variant: str | None = None  # a tree build's variant ("debug+4k"): Run.variant

    @property
    def arch(self) -> str:
        return self.profile.name

    @property
    def release(self) -> str | None:
        return self.kernel_info.release


# --- Boots from a results file or from the arch profiles ----------------------------------------

# Options pipeline.boot gives QEMU that the LAVA device type sets itself (console, monitor,
# memory) or that the job deploys (kernel, initrd, firmware), and the harness's virtio-serial
# results channel, which a LAVA job does without.
_DROP_WITH_VALUE = {"-kernel", "-initrd", "-append", "-display", "-serial", "-monitor", "-nic",
                    "-chardev", "-m", "-bios"}


def machine_args(argv: list[str]) -> tuple[tuple[str, ...], Path | None]:
    """The machine part of a harness QEMU argv, each option with its value as one word (LAVA's
    extra_options joins them into a command line), and the -bios file."""
    args: list[str] = []
    firmware = None
    words = argv[1:]
    i = 0
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else None
        i += 2 if value is not None else 1
        if word == "-bios" and value:
            firmware = Path(value)
        if word in _DROP_WITH_VALUE:
            continue
        if word == "-device" and value and ("hvoserial" in value or "virtio-serial" in value):
            continue
        if value is not None and " " in value:
            raise HarnessError(f"QEMU option {word} {value!r} has a space, which LAVA's extra_options "
                               "cannot carry: boot without it")
        args.append(f"{word} {value}" if value is not None else word)
    return tuple(args), firmware


def _argv_value(argv: list[str], option: str) -> str | None:
    for i, word in enumerate(argv[:-1]):
        if word == option:
            return argv[i + 1]
    return None


_NODE_MEMORY = re.compile(r"^memory-backend-ram,id=mem\d+,size=(?P<mib>\d+)M$")


def specs_from_results(results: Results, origin: Path) -> list[BootSpec]:
    """A spec per booted run of RESULTS (a skipped run has no boot to repeat); the plan is the
    one the harness makes of the run's arch, node layout and page size, and must be what the
    run's command line asked for."""
    specs = []
    for run in results.runs:
        if not run.qemu_argv or run.hugetlb.get("backend", "qemu") != "qemu":
            continue  # not booted, or a vng boot (the host's userspace: no ramdisk repeats it)
        argv = qemu.on_fresh_ram(run.qemu_argv)  # the harness's memory pool files are not the lab's
        kernel = _argv_value(argv, "-kernel") or run.kernel.path
        args, firmware = machine_args(argv)
        nodes = tuple(int(m["mib"]) for word in argv if (m := _NODE_MEMORY.match(word)))
        profile = get_profile(run.arch)
        profile = replace(profile, bios=str(firmware) if firmware else None,
                          node_mem_mib=nodes or profile.node_mem_mib)
        page_size = int(run.hugetlb.get("page_size") or min(profile.huge_sizes_by_page_size))
        plan = make_plan(profile, page_size, run.hvo.requested)
        words = set(run.cmdline.split())
        missing = [arg for arg in plan.kernel_args() if arg not in words]
        if missing:
            raise HarnessError(f"{origin}: run {run.arch} hvo-{run.hvo.requested} booted with another plan "
                               f"than this harness makes ({missing[0]} is not in its command line): "
                               "export with --arch instead")
        facts = KernelFacts(page_size, StructPage.from_json(run.kernel.struct_page), None)
        stem = (Path(run.console_log).name.removesuffix(".console.log")
                or f"{run.arch}-hvo-{run.hvo.requested}")
        specs.append(BootSpec(stem, profile, run.hvo.requested, run.cmdline, Path(kernel), run.kernel, args,
                              profile.memory_mib, firmware, plan, facts, run.variant))
    if not specs:
        raise HarnessError(f"{origin} has no QEMU boot to export (every run was skipped or booted with "
                           "vng): export the results of a `hvo-harness run`, or give --arch")
    return specs


def spec_for_boot(profile: ArchProfile, kernel: Any, hvo: str, append: str = "") -> BootSpec:
    """The spec of the boot pipeline.boot would make of KERNEL (a pipeline.PreparedKernel) with
    hugetlb_free_vmemmap=HVO: the same profile, plan and command line."""
    from harness import pipeline

    booted = qemu.boot_profile(profile, kernel.image)
    facts = pipeline.kernel_facts(booted, kernel)
    plan = make_plan(booted, facts.page_size, hvo)
    cmdline = qemu.kernel_cmdline(booted, *plan.kernel_args(), append)
    unused = Path("/nonexistent")
    files = qemu.GuestFiles(kernel.image.path, unused, unused, unused)
    argv = qemu.build_argv(booted, files, cmdline, qemu.AccelChoice("tcg", "a LAVA job runs under TCG"))
    args, firmware = machine_args(argv)
    return BootSpec(pipeline.boot_stem(booted, kernel, hvo), booted, hvo, cmdline, kernel.image.path,
                    kernel.info, args, booted.memory_mib, firmware, plan, facts, kernel.variant)


def check_arches(arches: list[str]) -> None:
    """Every arch asked for must be one LAVA's qemu device type can boot."""
    for arch in arches:
        if arch in UNSUPPORTED_ARCHES:
            raise HarnessError(f"{arch}: {UNSUPPORTED_ARCHES[arch]}: export the other arches "
                               "(--arch x86_64,riscv64), or the board template (--board)")


# --- The guest side: the ramdisk and the test definition ----------------------------------------

def ramdisk(profile: ArchProfile) -> Path:
    """The LAVA ramdisk of PROFILE's arch: the harness's initramfs (busybox, scenarios.sh,
    hvoh) with LAVA_INIT as /init; cached by content like every initramfs."""
    busybox = artefacts.ensure_busybox(profile)
    helper = guest_helper.build(artefacts.ensure_linux_source(), profile)
    init = cache_dir("lava") / f"init-{hashlib.sha256(LAVA_INIT.encode()).hexdigest()[:16]}"
    if not init.exists():
        init.write_text(LAVA_INIT)
    return initramfs.build(busybox.path, helper, extra={"init": init})


# Each KTAP result line as one LAVA test case: 'ok 3 boot size_kb=2048 node=1' is
# boot-2048kB-node1 (LAVA's test case names take no spaces or '='), '# SKIP' is skip, 'not ok'
# fail. The guest's view only: the harness's judge decides the savings and the findings.
_LAVA_CASES = (
    'while IFS= read -r line; do '
    'case "$line" in "ok "*) result=pass ;; "not ok "*) result=fail ;; *) continue ;; esac; '
    'case "$line" in *"# SKIP"*) result=skip ;; esac; '
    'name=${line#not }; name=${name#ok }; name=${name#* }; name=${name%% #*}; '
    "id=$(echo \"$name\" | sed -e 's/size_kb=\\([0-9]*\\)/\\1kB/' -e 's/=//g' -e 's/ /-/g'); "
    'lava-test-case "$id" --result "$result"; '
    'done < /tmp/hvo.ktap'
)


def test_definition(fetch_guest: bool) -> dict[str, Any]:
    """The inline test definition: scenarios.sh, a LAVA test case per KTAP result, then the
    KTAP and the kernel log framed for the harness's judge. FETCH_GUEST (a board): the test first
    fetches the guest files (scenarios.sh, hvoh) from the HVO_GUEST_URL parameter."""
    steps = []
    if fetch_guest:
        steps.append('if [ -n "$HVO_GUEST_URL" ]; then mkdir -p /hvo && wget -O /tmp/hvo-guest.tar '
                     '"$HVO_GUEST_URL" && tar -C / -xf /tmp/hvo-guest.tar; fi')
    steps += [
        'export PATH="$PATH:/bin"',
        "/bin/sh /hvo/scenarios.sh > /tmp/hvo.ktap 2>&1; echo \"hvo-lava: scenarios.sh exit $?\"",
        "cat /tmp/hvo.ktap",
        _LAVA_CASES,
        # For the judge: the KTAP with a CRC per line (kernel output can cut into a console
        # line), and every kernel log record with its level (the console level hides some).
        f"hvoh frame {kmsg.RESULT_TAG} < /tmp/hvo.ktap",
        'echo "hvo-harness: kmsg end" > /dev/kmsg',
        f"hvoh kmsg {kmsg.KMSG_TAG}",
        'echo "hvo-lava: done"',
    ]
    definition: dict[str, Any] = {
        "metadata": {
            "format": "Lava-Test Test Definition 1.0",
            "name": TESTDEF_NAME,
            "description": "hvo-harness: HugeTLB Vmemmap Optimization scenarios (guest_scripts/scenarios.sh)",
            "os": ["oe"],
            "scope": ["functional"],
        },
        "run": {"steps": steps},
    }
    if fetch_guest:
        definition["params"] = {"HVO_GUEST_URL": ""}
    return definition


# --- Jobs ---------------------------------------------------------------------------------------

def _file_url(path: Path) -> str:
    # Not Path.as_uri(): lava-dispatcher opens a file:// URL's path as written, without undoing
    # percent-encoding ('7.2.13%2Bdeb14' is then a file that does not exist).
    return f"file://{path.resolve()}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _timeouts(test_minutes: int) -> dict[str, Any]:
    return {
        "job": {"minutes": test_minutes + 15},
        "action": {"minutes": test_minutes},
        "connection": {"minutes": 2},
    }


def qemu_job(spec: BootSpec, ramdisk_path: Path, kernel_url: str | None = None,
             ramdisk_url: str | None = None, test_minutes: int = 10) -> dict[str, Any]:
    """A job for LAVA's qemu device type: deploy to tmpfs, boot qemu, the scenarios."""
    check_arches([spec.arch])
    images: dict[str, Any] = {
        "kernel": {
            "url": kernel_url or _file_url(spec.kernel),
            "image_arg": f'-kernel {{kernel}} -append "{spec.cmdline}"',
        },
        "ramdisk": {
            "url": ramdisk_url or _file_url(ramdisk_path),
            "image_arg": "-initrd {ramdisk}",
            # The dispatcher unpacks the cpio, adds its test shell (/lava-<id>) and packs it again.
            "format": "cpio.newc",
            "overlays": {"lava": True},
        },
    }
    # The dispatcher checks what it downloaded against these (a lab's copy too).
    images["kernel"]["sha256sum"] = _sha256(spec.kernel)
    images["ramdisk"]["sha256sum"] = _sha256(ramdisk_path)
    if spec.firmware is not None:
        images["bios"] = {"url": _file_url(spec.firmware), "image_arg": "-bios {bios}",
                          "sha256sum": _sha256(spec.firmware)}
    return {
        "device_type": "qemu",
        "job_name": f"hvo-harness {spec.name}" + (f" ({spec.release})" if spec.release else ""),
        "timeouts": _timeouts(test_minutes),
        "priority": "medium",
        "visibility": "public",
        "context": {
            "arch": spec.arch,
            # KVM fails on the hosts this was made on (README); a lab with working KVM may
            # drop this, but HVO's findings so far are TCG's (docs/findings.md).
            "no_kvm": True,
            "memory": spec.memory_mib,
            "extra_options": list(spec.machine_args),
        },
        "metadata": {
            "hvo-harness.boot": spec.name,
            "hvo-harness.arch": spec.arch,
            "hvo-harness.hvo": spec.hvo,
            "hvo-harness.kernel-release": spec.release or "unknown",
            "hvo-harness.cmdline": spec.cmdline,
        },
        "actions": [
            {"deploy": {"to": "tmpfs", "timeout": {"minutes": 5}, "images": images}},
            {"boot": {"method": "qemu", "media": "tmpfs", "timeout": {"minutes": 5},
                      "prompts": [PROMPT]}},
            {"test": {"timeout": {"minutes": test_minutes}, "definitions": [_inline(False)]}},
        ],
    }


def _inline(fetch_guest: bool) -> dict[str, Any]:
    return {"from": "inline", "name": TESTDEF_NAME, "path": f"inline/{TESTDEF_NAME}.yaml",
            "repository": test_definition(fetch_guest)}


BOARD_PLACEHOLDER = "REPLACE-WITH-THE-LAB-DEVICE-TYPE"


def board_job(spec: BootSpec, test_minutes: int = 10) -> dict[str, Any]:
    """A template for a real board: the lab fills in deploy and boot (its device type, its
    images); the job carries the plan's command line in context extra_kernel_args (what LAVA's
    u-boot, grub and depthcharge device types append) and fetches the guest files in the test."""
    plan_args = " ".join(word for word in spec.cmdline.split()
                         if not word.startswith(("console=", "earlycon")))
    return {
        "device_type": BOARD_PLACEHOLDER,
        "job_name": f"hvo-harness board {spec.arch} hvo-{spec.hvo}",
        "timeouts": _timeouts(test_minutes),
        "priority": "medium",
        "visibility": "public",
        "context": {"extra_kernel_args": plan_args},
        "metadata": {"hvo-harness.arch": spec.arch, "hvo-harness.hvo": spec.hvo,
                     "hvo-harness.note": "deploy and boot are the lab's: replace both placeholder "
                                         "actions; the test needs the guest files at HVO_GUEST_URL"},
        "actions": [
            {"deploy": {"to": "tmpfs", "images": {"kernel": {"url": "REPLACE-WITH-THE-KERNEL-URL"}}}},
            {"boot": {"method": "minimal", "prompts": ["REPLACE-WITH-THE-BOARD-PROMPT"]}},
            {"test": {"timeout": {"minutes": test_minutes}, "definitions": [_inline(True)]}},
        ],
    }


def guest_tar(profile: ArchProfile, out: Path) -> Path:
    """The guest files a board's test fetches (HVO_GUEST_URL): /hvo/scenarios.sh, /bin/hvoh."""
    import tarfile

    helper = guest_helper.build(artefacts.ensure_linux_source(), profile)
    with tarfile.open(out, "w") as archive:
        archive.add(initramfs.guest_script_files()["hvo/scenarios.sh"], "hvo/scenarios.sh")
        archive.add(helper, "bin/hvoh")
    return out


# --- Validation and writing ---------------------------------------------------------------------

def _lava_python(request: dict[str, Any]) -> dict[str, dict[str, str]]:
    if shutil.which(LAVA_PYTHON) is None:
        raise HarnessError(f"{LAVA_PYTHON} not found: LAVA's schemas run in Debian's python3: "
                           "run `make deps`")
    proc = subprocess.run([LAVA_PYTHON, "-c", _VALIDATOR], input=json.dumps(request), capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named" in last:
            raise HarnessError(f"LAVA's job schema is not installed ({last}): run `make deps` "
                               "(Debian packages lava-common and python3-yaml)")
        raise HarnessError(f"LAVA schema validation failed to run: {last}")
    answer: dict[str, dict[str, str]] = json.loads(proc.stdout)
    return answer


def to_yaml(jobs: dict[str, dict[str, Any]], devices: dict[str, dict[str, Any]] | None = None,
            strict: bool = True) -> dict[str, str]:
    """Each job validated with LAVA's job schema (lava_common.schemas.validate, strict) and
    each device dictionary with LAVA's device schema, as YAML text. A job LAVA would refuse is a
    HarnessError naming it and LAVA's message (with STRICT; else it is left out of the answer)."""
    answer = _lava_python({"jobs": jobs, "devices": devices or {}})
    texts = {}
    for name, item in answer.items():
        if "error" in item:
            if strict:
                raise HarnessError(f"{name}: LAVA's schema refuses it: {item['error']}")
            continue
        texts[name] = item["yaml"]
    return texts


def write_jobs(texts: dict[str, str], out_dir: Path) -> list[Path]:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in texts.items():
            path = out_dir / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            paths.append(path)
    except OSError as error:
        raise HarnessError(f"--out {out_dir}: cannot write there ({error.strerror or error}): "
                           "give a writable directory") from None
    return paths


# --- A local dispatcher run ---------------------------------------------------------------------

def device_dictionary(job: dict[str, Any]) -> dict[str, Any]:
    """The device configuration lava-run needs for JOB, as LAVA's server would render it from
    its qemu device-type template (lava-server 2023.01 device-types/qemu.jinja2 and base.jinja2)
    with the job's context: written by hand, as tuxrun does, since lava-server is a whole web
    application. Only what a qemu tmpfs job uses is kept."""
    context = job["context"]
    arch = context["arch"]
    command = "qemu-system-x86_64" if arch in ("amd64", "x86_64") else f"qemu-system-{arch}"
    options = []
    if arch == "riscv64":
        options += [f"-machine {context.get('machine', 'virt')}", f"-cpu {context.get('cpu', 'rv64')}"]
    if not context.get("no_kvm"):
        options += ["-cpu host", "-enable-kvm"]
    options += [
        "-nographic",
        "-net nic,model=virtio,macaddr=52:54:00:12:34:58 -net user",
        f"-m {context.get('memory', 512)}",
        "-monitor none",
    ]
    qemu_method = {"parameters": {"command": command,
                                  "boot_options": {"root": "/dev/sda1", "console": "ttyS0,115200"},
                                  "options": options, "extra": list(context.get("extra_options", []))}}
    return {
        "constants": {
            "posix": {"lava_test_sh_cmd": "/bin/sh", "lava_test_results_dir": "/lava-%s",
                      "lava_test_shell_file": "~/.bashrc"},
            "shutdown-message": "The system is going down for reboot NOW",
            "kernel-start-message": "Linux version [0-9]",
            "default-shell-prompt": "lava-test: # ",
            "spawn_maxread": "4092",
            "failure_retry": 1,
            "boot_retry": None,
        },
        "parameters": {},
        "available_architectures": ["arm64", "arm", "aarch64", "amd64", "x86_64", "hppa", "i386", "mips",
                                    "mipsel", "mips64", "nios2", "ppc", "ppc64", "riscv64", "sparc",
                                    "sparc64"],
        "actions": {
            "deploy": {"connections": {"serial": None, "lxc": None},
                       "methods": {"image": {"parameters": {"guest": {"size": 512, "interface": "ide",
                                                                      "driveid": "lavatest"}}}}},
            "boot": {"connections": {"serial": None}, "methods": {"minimal": None, "qemu": qemu_method}},
        },
        "timeouts": {
            "actions": {"boot-qemu-image": {"minutes": 5}, "boot-image-retry": {"minutes": 5},
                        "auto-login-action": {"minutes": 5}, "lava-test-shell": {"minutes": 15},
                        "http-download": {"minutes": 5}, "download-retry": {"minutes": 5}},
            "connections": {"lava-test-shell": {"seconds": 10}, "auto-login-action": {"minutes": 5}},
        },
    }


# The dispatcher's scratch directory for a job is DISPATCHER_TMP/<job id> (lava_common.constants
# DISPATCHER_DOWNLOAD_DIR; no --dispatcher config, so no prefix). lava-run removes it when the
# job ends, but not when it is killed.
DISPATCHER_TMP = Path("/var/lib/lava/dispatcher/tmp")
_VERSION = re.compile(r"^lava-dispatcher, installed at version: (?P<version>\S+)")


@dataclass
class DispatcherLog:
    """What a lava-run log says (parse_dispatcher_log)."""

    console: str  # the target's output, one line per record of level "target"
    lava_results: list[dict[str, str]]  # each lava-test-case the dispatcher recorded
    error: str | None  # the job's error, when it ended in one
    # LAVA's own result of the job (definition lava, case job): "pass" | "fail"; None: the log
    # has none (lava-run was ended before it could say).
    job_result: str | None
    version: str | None  # lava-dispatcher's version, as lava-run logs it first


@dataclass
class DispatcherRun:
    """One lava-run of a job: how it ended and what its log says."""

    # lava-run's exit status (0: LAVA's job result pass, 1: any failure); None: the harness
    # ended it (ended_by) before it exited.
    returncode: int | None
    seconds: float
    log_path: Path  # the dispatcher's log (JSON records), as lava-run printed it
    log: DispatcherLog
    ended_by: str | None = None  # "timeout" | "stop": the harness ended lava-run
    timeout: float = 0.0


_YAML_TAG = re.compile(r': ! (?=")')


def parse_dispatcher_log(text: str) -> DispatcherLog:
    """The console (the records of level "target", one line each), the test cases LAVA
    recorded (level "results", those of the test definition), LAVA's result of the job and its
    error (the failed job result's error_msg, which names the cause, else the first record of
    level "error") of a lava-run log: one JSON record a line, {"dt": ..., "lvl": ..., "msg": ...},
    as lava-run prints it without --url."""
    console: list[str] = []
    cases: list[dict[str, str]] = []
    job_error = first_error = job_result = version = None
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            # Each record is YAML in flow style, which is JSON but for the odd non-specific
            # tag ('"endtc": ! "758"' on a test case): without the tag it is JSON again.
            try:
                record = json.loads(_YAML_TAG.sub(": ", line))
            except ValueError:
                continue  # lava-run's own stderr, a traceback: kept in the log file
        if not isinstance(record, dict):
            continue
        lvl, msg = record.get("lvl"), record.get("msg")
        if lvl == "target" and isinstance(msg, str):
            # LAVA's shell logger (lava_dispatcher/shell.py ShellLogger.write) writes each '"'
            # of the target's output as a backslash and '"' ("for YAML syntax"); each such pair is
            # one of those (a backslash the guest wrote before a '"' became two), so
            # this is its exact inverse and the line is the guest's again (its CRC holds).
            console.append(msg.replace('\\"', '"'))
        elif lvl == "results" and isinstance(msg, dict):
            if msg.get("definition") not in (None, "lava"):
                cases.append({key: str(msg[key]) for key in ("definition", "case", "result") if key in msg})
            elif msg.get("case") == "job":
                job_result = str(msg.get("result"))
                if job_result != "pass":
                    job_error = str(msg.get("error_msg") or "").strip() or None
        elif lvl == "error" and first_error is None and isinstance(msg, str):
            # Mostly LAVA's help line ("JobError: Your job cannot terminate cleanly."): the
            # job result's error_msg says more, when there is one.
            first_error = msg
        elif lvl == "info" and version is None and isinstance(msg, str) and (m := _VERSION.match(msg)):
            version = m["version"]
    error = job_error or first_error
    if error is None and job_result not in (None, "pass"):
        error = "the job failed"
    return DispatcherLog("\n".join(console) + "\n", cases, error, job_result, version)


def run_dispatcher(job_yaml: Path, device_yaml: Path, out_dir: Path, timeout: float = 900.0,
                   stop: threading.Event | None = None) -> DispatcherRun:
    """One job through lava-run on this machine; its log is DIR/lava-run.log. STOP set (Ctrl-C
    in another thread) or TIMEOUT seconds passed: lava-run and its QEMU are ended. Whichever way
    it ends, lava-run's scratch directory (DISPATCHER_TMP/<job id>) does not stay behind."""
    if shutil.which(LAVA_RUN) is None:
        raise HarnessError("lava-run not found: run `make deps` (Debian package lava-dispatcher)")
    work = out_dir / "dispatcher"
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    # The job id names the dispatcher's scratch directory (DISPATCHER_TMP/<id>): one per
    # process, so two runs at once do not share it.
    job_id = f"hvo-{os.getpid()}"
    argv = [LAVA_RUN, "--job-id", job_id, "--output-dir", str(work),
            "--device", str(device_yaml), str(job_yaml)]
    # The log goes straight to a file (it is most of a megabyte), and lava-run runs in a session
    # of its own: on a timeout, a stop or Ctrl-C the whole group goes, QEMU (lava-run's child)
    # with it.
    log_path = out_dir / "lava-run.log"
    returncode: int | None = None
    ended_by: str | None = None
    try:
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = start + timeout
                while returncode is None:
                    if stop is not None and stop.is_set():
                        ended_by = "stop"
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        ended_by = "timeout"
                        break
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        returncode = proc.wait(timeout=min(left, 0.5))
            finally:
                # Also after lava-run's own exit: anything it left running in its session (a
                # QEMU of a job that failed half-way) goes too. The session is this run's alone.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        # lava-run removes it at the job's end, but a killed lava-run (timeout, stop, Ctrl-C,
        # the OOM killer) does not: the next run of this pid would find its leftovers.
        shutil.rmtree(DISPATCHER_TMP / job_id, ignore_errors=True)
    text = log_path.read_text(errors="replace")
    if ended_by is not None:
        why = (f"lava-run ended after {timeout:.0f} s" if ended_by == "timeout"
               else "lava-run was stopped")
        text += json.dumps({"lvl": "error", "msg": f"hvo-harness: {why}"}) + "\n"
        log_path.write_text(text)
    log = parse_dispatcher_log(text)
    (out_dir / "console.log").write_text(log.console)
    return DispatcherRun(returncode, time.monotonic() - start, log_path, log, ended_by, timeout)


def read_back(console: str) -> tuple[str, protocol.GuestReport, kmsg.KernelLog]:
    """The guest's report (its KTAP text, and parsed) and kernel log from a dispatcher run's
    console: the framed KTAP (hvo-result:) and kernel log (hvo-kmsg:) lines the test definition
    sent, CRC-checked."""
    lines, missing = kmsg.numbered_lines(console, kmsg.RESULT_TAG)
    text = "\n".join(lines)
    report = protocol.parse(text)
    report.garbled = len(missing)
    log = dataclasses.replace(kmsg.merge(console, kmsg.parse_stream(console, framed=True)),
                              source="framed+console")
    return text, report, log


def dispatcher_outcome(dispatcher: DispatcherRun, report_done: bool) -> GuestOutcome:
    """How the job ended, in the terms the judge takes for every target: a job the dispatcher
    failed is lava-run's exit 1 with LAVA's own reason (the judge's error, as a QEMU that
    failed to run); the harness ending lava-run is a stop (error) or a hang (timeout)."""
    seconds = dispatcher.seconds
    if dispatcher.ended_by == "stop":
        return GuestOutcome("interrupted", "the LAVA job was stopped: lava-run and its QEMU were ended",
                            None, seconds, None)
    if dispatcher.ended_by == "timeout":
        return GuestOutcome("timeout", f"lava-run did not end within {dispatcher.timeout:.0f} s: the "
                            "harness ended it and its QEMU", None, seconds, None)
    status = dispatcher.returncode
    if status != 0:
        why = dispatcher.log.error or "no error in its log"
        return GuestOutcome("exited", f"the LAVA dispatcher failed the job: {why} (lava-run exit {status}, "
                            f"log {dispatcher.log_path})", None, seconds, status)
    if dispatcher.log.job_result == "pass" and report_done:
        return GuestOutcome("done", "the LAVA job ran to its end", None, seconds, 0)
    # lava-run said the job passed (a test step that fails does not fail a LAVA job), but the
    # guest's report did not come through whole.
    result = dispatcher.log.job_result or "none"
    return GuestOutcome("exited", f"the LAVA job ended (lava-run exit 0, job result {result}) before the "
                        "guest's report was whole", None, seconds, 0)


_DEVICE_TYPE = re.compile(r"^device_type: *['\"]?(?P<type>[^'\"\s]+)", re.MULTILINE)


class LavaTarget:
    """One exported job of SPEC (its YAML at JOB_YAML, the device dictionary it runs on at
    DEVICE_YAML) run through lava-run on this machine (harness.targets.Target). The plan is
    the job's: it was put on the job's kernel command line when it was exported."""

    name = "lava"

    def __init__(self, spec: BootSpec, job_yaml: Path, device_yaml: Path, timeout: float = 900.0,
                 progress: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.job_yaml = job_yaml
        self.device_yaml = device_yaml
        self.timeout = timeout
        self.progress = progress

    def prepare(self) -> TargetFacts:
        spec = self.spec
        return TargetFacts(spec.profile, spec.facts, spec.kernel_info, spec.cmdline, spec.hvo,
                           Accel("tcg", "a LAVA job runs under TCG (its context has no_kvm)"),
                           variant=spec.variant)

    def run(self, plan: Plan, facts: TargetFacts, out_dir: Path,
            stop: threading.Event | None = None) -> TargetOutput:
        if plan != self.spec.plan:
            raise HarnessError(f"{self.spec.name}: the LAVA job boots the plan it was exported with, not "
                               "this one: export the job again")
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.progress:
            self.progress(f"{self.spec.name}: running its LAVA job through lava-run")
        dispatcher = run_dispatcher(self.job_yaml, self.device_yaml, out_dir, self.timeout, stop)
        return self.output(dispatcher, out_dir)

    def output(self, dispatcher: DispatcherRun, out_dir: Path) -> TargetOutput:
        """What the dispatcher run brought back, as every target brings it back."""
        report_text, report, log = read_back(dispatcher.log.console)
        kernel_log = out_dir / f"{self.spec.name}.kernel.log"
        # A full disk is reported by the results write that follows.
        with contextlib.suppress(OSError):
            kernel_log.write_text(log.text)
        try:
            match = _DEVICE_TYPE.search(self.job_yaml.read_text())
        except OSError:
            match = None
        return TargetOutput(
            report_text, log, dispatcher_outcome(dispatcher, report.done), f"lava: {dispatcher.log_path}",
            files={"console_log": str(out_dir / "console.log"), "kernel_log": str(kernel_log)},
            record={"job": str(self.job_yaml), "device": str(self.device_yaml),
                    "device_type": match["type"] if match else "unknown",
                    "dispatcher": f"lava-run {dispatcher.log.version or '(version not logged)'}",
                    "job_result": dispatcher.log.job_result},
            report=report, cmdline=self.spec.cmdline,
            details={"lava_run_log": str(dispatcher.log_path), "lava_test_cases": dispatcher.log.lava_results,
                     "lava_error": dispatcher.log.error, "lava_run_exit": dispatcher.returncode},
        )

    def reproducer(self, run: Run, out_dir: Path) -> Path | None:
        """OUT_DIR/repro/<boot>/: the job, its device dictionary and the lava-run command that
        runs them again (the job's file:// images are this machine's)."""
        bundle = out_dir / "repro" / self.spec.name
        bundle.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.job_yaml, bundle / "job.yaml")
        shutil.copyfile(self.device_yaml, bundle / "device.yaml")
        script = bundle / "lava-run.sh"
        script.write_text(
            "#!/bin/sh\n# Run this LAVA job again (as root; its images are file:// paths of the machine "
            "that exported it).\n"
            'cd "$(dirname "$0")" && exec lava-run --job-id hvo-repro --output-dir output '
            "--device device.yaml job.yaml\n"
        )
        script.chmod(0o755)
        return bundle


# --- `hvo-harness export lava` ------------------------------------------------------------------

@dataclass(frozen=True)
class ExportRequest:
    results: Path | None = None  # a results file: a job per booted run
    arches: str | None = None  # or --arch: a job per arch and HVO setting, as `run` would boot
    kernel: str = "debian"
    config: Path | None = None
    hvo_settings: tuple[str, ...] = ("on", "off")
    append: str = ""
    out: Path = Path("lava-jobs")
    # Copy the kernels, ramdisks and firmware into OUT/artefacts and point the jobs at
    # URL/<file> (a lab's dispatcher cannot read this machine's file:// paths).
    artefacts_url: str | None = None
    run: bool = False  # run the first QEMU job through lava-run here and judge it


@dataclass
class ExportOutcome:
    written: list[Path]
    skipped: list[str]  # one line per arch LAVA's qemu device type cannot take
    run: Run | None = None
    results_path: Path | None = None


def _specs(request: ExportRequest, progress: Any) -> list[BootSpec]:
    from harness import pipeline
    from harness.profiles import parse_arch_list
    from harness.results import load

    if (request.results is None) == (request.arches is None):
        raise HarnessError("export lava takes a results file or --arch A[,B|all], not both and not neither")
    if request.results is not None:
        return specs_from_results(load(request.results), request.results)
    assert request.arches is not None
    profiles = parse_arch_list(request.arches)
    matrix = pipeline.MatrixRequest(profiles, kernel=request.kernel, config=request.config,
                                    hvo_settings=request.hvo_settings, append=request.append)
    matrix.check()
    if len(matrix.kernel_choices()) != 1:
        raise HarnessError("export lava --kernel takes one kernel (a job is one boot): give one item")
    specs = []
    for profile in profiles:
        kernel = pipeline.prepare_matrix_kernel(profile, matrix.kernel_choices()[0], request.config,
                                                progress=progress)
        if isinstance(kernel, pipeline.UnavailableKernel):
            raise HarnessError(f"{profile.name}: {kernel.reason}: give another --kernel")
        specs += [spec_for_boot(profile, kernel, hvo, request.append) for hvo in request.hvo_settings]
    return specs


def _publish(path: Path, request: ExportRequest) -> str | None:
    """With --artefacts-url: PATH copied into OUT/artefacts and its URL there, else None."""
    if request.artefacts_url is None:
        return None
    target = request.out / "artefacts" / path.name
    if not target.exists() or target.stat().st_size != path.stat().st_size:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return f"{request.artefacts_url.rstrip('/')}/{path.name}"


def export(request: ExportRequest, progress: Any = None) -> ExportOutcome:
    """The QEMU jobs and board templates of the request, validated with LAVA's schemas, written
    to OUT (jobs), OUT/boards (templates and the guest files they fetch) and OUT/devices (the
    device dictionary each QEMU job runs on with lava-run); with RUN, the first QEMU job run
    through lava-run and judged (OUT/lava-run/<boot>/results.json)."""
    specs = _specs(request, progress)
    skipped = [f"{arch}: skip: {UNSUPPORTED_ARCHES[arch]}"
               for arch in dict.fromkeys(spec.arch for spec in specs) if arch in UNSUPPORTED_ARCHES]
    qemu_specs = [spec for spec in specs if spec.arch not in UNSUPPORTED_ARCHES]
    if not qemu_specs:
        raise HarnessError(f"{skipped[0].replace(': skip:', ':')}: export the boots of another arch "
                           "(x86_64, riscv64)")
    for spec in qemu_specs:
        for what, path in (("kernel", spec.kernel), ("firmware", spec.firmware)):
            if path is not None and not path.is_file():
                raise HarnessError(f"{spec.name}: its {what} {path} is not there any more: export a "
                                   "results file of this machine's boots, or give --arch")
    jobs: dict[str, dict[str, Any]] = {}
    devices: dict[str, dict[str, Any]] = {}
    ramdisks: dict[str, Path] = {}
    for spec in qemu_specs:
        if spec.arch not in ramdisks:
            ramdisks[spec.arch] = ramdisk(spec.profile)
        job = qemu_job(spec, ramdisks[spec.arch], _publish(spec.kernel, request),
                       _publish(ramdisks[spec.arch], request))
        if spec.firmware is not None and request.artefacts_url is not None:
            job["actions"][0]["deploy"]["images"]["bios"]["url"] = _publish(spec.firmware, request)
        jobs[spec.name] = job
        devices[f"devices/{spec.name}"] = device_dictionary(job)
    for spec in specs:
        jobs[f"boards/board-{spec.name}"] = board_job(spec)
    texts = to_yaml(jobs, devices)
    written = write_jobs(texts, request.out)
    for arch, spec in {spec.arch: spec for spec in specs}.items():
        (request.out / "boards").mkdir(parents=True, exist_ok=True)
        written.append(guest_tar(spec.profile, request.out / "boards" / f"hvo-guest-{arch}.tar"))
    outcome = ExportOutcome(written, skipped)
    if request.run:
        spec = qemu_specs[0]
        run_dir = request.out / "lava-run" / spec.name
        target = LavaTarget(spec, request.out / f"{spec.name}.yaml",
                            request.out / "devices" / f"{spec.name}.yaml", progress=progress)
        outcome.run = run_job(target, run_dir, progress)
        results = Results(runs=[outcome.run], harness_version=_version())
        outcome.results_path = run_dir / "results.json"
        results.write(outcome.results_path)
    return outcome


def run_job(target: LavaTarget, out_dir: Path, progress: Callable[[str], None] | None = None,
            stop: threading.Event | None = None) -> Run:
    """TARGET's job run and judged as every target's run is (pipeline.run_target: prepare,
    plan, run, targets.judged_run, a reproducer when it fails)."""
    from harness import pipeline

    return pipeline.run_target(target, out_dir, progress, stop)


def _version() -> str:
    from harness import __version__

    return f"{__version__} (lava-run)"
