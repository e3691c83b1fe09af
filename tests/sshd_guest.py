"""A QEMU guest that runs OpenSSH's sshd, for the SSH target's tests (tests/test_ssh_target.py).

Debian's own x86_64 kernel (the one the pipeline boots) with an initramfs of Debian packages:
busybox-static, openssh-server and every library its programs need (found by their ELF
DT_NEEDED entries, fetched through the harness's private apt state, harness/artefacts.py),
and virtio_net with what it needs from the kernel's own linux-modules package (Debian builds
every network driver as a module). The base initramfs is built once per content and cached
under cache_dir('sshd-guest'); the keys are made per test and go into a second, small cpio
appended to it (the kernel unpacks concatenated archives in turn), so no key is ever cached.

The guest brings up eth0 at QEMU's user-network address and starts `sshd -D -e`; QEMU
forwards a port on 127.0.0.1 only (hostfwd) to its port 22."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libarchive

from harness import artefacts, qemu
from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.images import prepare
from harness.profiles import ArchProfile, get_profile

PROFILE = get_profile("x86_64")
DEBIAN_ARCH = "amd64"
LIBDIR = "usr/lib/x86_64-linux-gnu"
# sshd and the programs it runs per connection (OpenSSH >= 9.8 splits the server in three).
SSHD_PROGRAMS = ("usr/sbin/sshd", "usr/lib/openssh/sshd-session", "usr/lib/openssh/sshd-auth")
# virtio_net needs net_failover, which needs failover.
MODULES = ("net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko")
READY = "sshd-guest: ready"
# Bumped when the guest's layout changes: the cached initramfs is then built again.
_LAYOUT_VERSION = "3"

INIT = """#!/bin/busybox sh
# PID 1 of the sshd guest: a network, sshd, nothing else.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run/sshd /tmp /var/empty
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/sshd
chmod 755 /run/sshd
for module in /lib/hvo-modules/failover.ko /lib/hvo-modules/net_failover.ko /lib/hvo-modules/virtio_net.ko; do
	insmod "$module" || echo "sshd-guest: error: insmod $module failed"
done
ip link set lo up
ip link set eth0 up || echo "sshd-guest: error: no eth0"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
chmod 600 /etc/ssh/ssh_host_ed25519_key
chmod 700 /root /root/.ssh /home/user /home/user/.ssh
chown -R 1000:1000 /home/user
/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config &
echo "sshd-guest: ready"
while true; do sleep 3600; done
"""

SSHD_CONFIG = """# The sshd guest's whole configuration: keys only, root allowed (the SSH target needs root).
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The cpio's files are owned by root with fixed modes; the guest has one user besides root.
StrictModes no
AuthorizedKeysFile .ssh/authorized_keys
PidFile /run/sshd.pid
LogLevel VERBOSE
"""

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "sshd:x:100:65534:sshd privilege separation:/run/sshd:/bin/false\n"
          "user:x:1000:1000:not root:/home/user:/bin/sh\n")
GROUP = "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n"


@dataclass(frozen=True)
class SshdGuestImage:
    kernel: Path
    initramfs: Path  # the cached base: no keys
    release: str
    config: Path


def _say(text: str) -> None:
    print(f"> {text}", flush=True)


def _fetch(name: str, version: str | None = None) -> artefacts.UnpackedPackage:
    """NAME:amd64 (sid's newest, or VERSION) unpacked into the harness's package cache, through
    its private apt state (sid's lists, as for busybox and the kernel)."""
    return artefacts.ensure_package(name, DEBIAN_ARCH, version, progress=_say)


def _needed(path: Path) -> list[str]:
    """The ELF file's DT_NEEDED sonames (readelf, binutils)."""
    done = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=False)
    return [line.split("[", 1)[1].split("]", 1)[0] for line in done.stdout.splitlines()
            if "(NEEDED)" in line]


def _depends(package: artefacts.UnpackedPackage) -> list[str]:
    """The library packages PACKAGE depends on (first alternative of each), from its index record."""
    names = []
    for field in ("Pre-Depends", "Depends"):
        for item in package.record.get(field, "").split(","):
            first = item.split("|")[0].strip().split(" ")[0].split(":")[0]
            if first.startswith("lib") or first == "zlib1g":
                names.append(first)
    return names


def _libraries(sshd: artefacts.UnpackedPackage, programs: dict[str, Path]) -> dict[str, Path]:
    """soname -> file for every library the programs need, transitively: the packages named
    by openssh-server's library dependencies and theirs, until each DT_NEEDED is found."""
    found: dict[str, Path] = {}
    queue = _depends(sshd)
    seen: set[str] = set()
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        package = _fetch(name)
        tree = package.path
        for directory in (tree / LIBDIR, tree / "lib/x86_64-linux-gnu", tree / "usr/lib64"):
            if directory.is_dir():
                for lib in directory.iterdir():
                    if ".so" in lib.name and (lib.is_file() or lib.is_symlink()):
                        found.setdefault(lib.name, lib)
        queue += _depends(package)
    wanted: dict[str, Path] = {}
    todo = [soname for program in programs.values() for soname in _needed(program)]
    while todo:
        soname = todo.pop()
        if soname in wanted:
            continue
        if soname not in found:
            raise HarnessError(f"no package among openssh-server's dependencies has {soname}")
        wanted[soname] = found[soname].resolve()
        todo += _needed(wanted[soname])
    loader = "ld-linux-x86-64.so.2"
    wanted[loader] = found[loader].resolve()
    return wanted


def _module(tree: Path, release: str, relative: str) -> bytes:
    """A kernel module, uncompressed (busybox insmod takes a plain ELF .ko)."""
    base = tree / "usr/lib/modules" / release / "kernel" / relative
    for suffix, tool in (("", None), (".xz", "xz"), (".zst", "zstd")):
        path = base.with_name(base.name + suffix)
        if path.is_file():
            if tool is None:
                return path.read_bytes()
            return subprocess.run([tool, "-dc", str(path)], capture_output=True, check=True).stdout
    raise HarnessError(f"{base} (or .xz, .zst) is not in linux-modules-{release}")


def ensure_image() -> SshdGuestImage:
    """Debian sid's x86_64 kernel and the sshd guest's base initramfs (built once)."""
    kernel = artefacts.ensure_debian_kernel(PROFILE)
    sshd = _fetch("openssh-server")
    sshd_tree = sshd.path
    busybox = artefacts.ensure_busybox(PROFILE).path
    programs = {rel: sshd_tree / rel for rel in SSHD_PROGRAMS if (sshd_tree / rel).is_file()}
    if "usr/sbin/sshd" not in programs:
        raise HarnessError(f"openssh-server in {sshd_tree} has no usr/sbin/sshd")
    key = hashlib.sha256(_LAYOUT_VERSION.encode() + kernel.release.encode() + kernel.version.encode()
                         + str(sshd_tree).encode() + busybox.read_bytes()[:4096] + INIT.encode()
                         + SSHD_CONFIG.encode()).hexdigest()[:20]
    out = cache_dir("sshd-guest") / f"sshd-guest-{key}.cpio"
    if not out.exists():
        modules_tree = _fetch(f"linux-modules-{kernel.release}", kernel.version).path
        files: dict[str, bytes] = {
            "init": INIT.encode(), "bin/busybox": busybox.read_bytes(),
            "etc/ssh/sshd_config": SSHD_CONFIG.encode(), "etc/passwd": PASSWD.encode(),
            "etc/group": GROUP.encode(),
            # The running kernel's config where Debian puts it: the SSH target reads it.
            f"boot/config-{kernel.release}": kernel.config.read_bytes(),
        }
        for rel, path in programs.items():
            files[rel] = path.read_bytes()
        for soname, path in _libraries(sshd, programs).items():
            files[f"{LIBDIR}/{soname}"] = path.read_bytes()
        for relative in MODULES:
            files[f"lib/hvo-modules/{Path(relative).name}"] = _module(modules_tree, kernel.release, relative)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        # The loader where the programs' PT_INTERP names it (a copy: no symlinks needed).
        files["lib64/ld-linux-x86-64.so.2"] = files[f"{LIBDIR}/ld-linux-x86-64.so.2"]
        _write_cpio(tmp, files)
        tmp.replace(out)
    return SshdGuestImage(kernel.image, out, kernel.release, kernel.config)


_DIRS = ("bin", "dev", "proc", "sys", "tmp", "run", "root", "root/.ssh", "home", "home/user",
         "home/user/.ssh", "etc", "etc/ssh", "var", "var/empty", "lib", "lib64", "usr", "usr/lib",
         "usr/sbin", "usr/bin", "usr/lib/openssh", "usr/lib/x86_64-linux-gnu", "lib/hvo-modules", "boot")


def _write_cpio(path: Path, files: dict[str, bytes], dirs: tuple[str, ...] = _DIRS) -> None:
    common = {"uid": 0, "gid": 0, "mtime": 0}
    with libarchive.file_writer(str(path), "cpio_newc") as archive:
        for directory in dirs:
            archive.add_file_from_memory(directory, 0, b"", filetype=stat.S_IFDIR, permission=0o755,
                                         **common)
        if "dev" in dirs:
            archive.add_file_from_memory("dev/console", 0, b"", filetype=stat.S_IFCHR,
                                         permission=0o600, rdev=(5, 1), **common)
        for name in sorted(files):
            data = files[name]
            archive.add_file_from_memory(name, len(data), data, permission=0o755, **common)


@dataclass(frozen=True)
class Keys:
    """Made for one test: the client's key and the guest's host key (ed25519, ssh-keygen)."""

    client: Path  # private key; client.with_suffix('.pub') is its public half
    host: Path
    user_key: Path  # a second client key, for the non-root user only


def make_keys(directory: Path) -> Keys:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("client", "host", "user"):
        path = directory / f"{name}_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hvo-test-{name}",
                        "-f", str(path)], check=True)
        paths.append(path)
    return Keys(*paths)


def keys_cpio(keys: Keys, into: Path) -> Path:
    """The per-test archive: the host key, root's and the user's authorized_keys."""
    pub = lambda path: Path(f"{path}.pub").read_bytes()  # noqa: E731
    files = {
        "etc/ssh/ssh_host_ed25519_key": keys.host.read_bytes(),
        "etc/ssh/ssh_host_ed25519_key.pub": pub(keys.host),
        "root/.ssh/authorized_keys": pub(keys.client),
        "home/user/.ssh/authorized_keys": pub(keys.user_key),
    }
    path = into / "keys.cpio"
    _write_cpio(path, files, dirs=("etc", "etc/ssh", "root", "root/.ssh", "home", "home/user",
                                   "home/user/.ssh"))
    return path


def known_hosts_line(keys: Keys, port: int, host: str = "127.0.0.1") -> str:
    kind, blob = Path(f"{keys.host}.pub").read_text().split()[:2]
    return f"[{host}]:{port} {kind} {blob}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningGuest:
    process: subprocess.Popen[bytes]
    port: int
    console: Path
    argv: list[str]


def guest_argv(profile: ArchProfile, image: SshdGuestImage, initramfs: Path, cmdline: str, port: int,
               scratch: Path) -> list[str]:
    """The pipeline's own QEMU command line for this kernel (qemu.build_argv: machine, NUMA
    nodes, memory), with user networking forwarding 127.0.0.1:PORT to the guest's sshd."""
    files = qemu.GuestFiles(image.kernel, initramfs, scratch / "unused.results", scratch / "unused.dmesg")
    argv = qemu.build_argv(profile, files, cmdline, qemu.AccelChoice("tcg", "the sshd guest runs under TCG"))
    nic = argv.index("-nic")
    argv[nic + 1] = f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"
    return argv


@contextlib.contextmanager
def running(image: SshdGuestImage, keys: Keys, cmdline_args: list[str], scratch: Path,
            timeout: float = 120.0) -> Iterator[RunningGuest]:
    """Boot the guest, wait until its sshd answers on the forwarded port; end QEMU after."""
    profile = qemu.boot_profile(PROFILE, prepare(image.kernel, PROFILE))
    initramfs = scratch / "sshd-guest.cpio"
    with open(initramfs, "wb") as out:
        for part in (image.initramfs, keys_cpio(keys, scratch)):
            with open(part, "rb") as stream:
                shutil.copyfileobj(stream, out)
    port = free_port()
    cmdline = qemu.kernel_cmdline(profile, *cmdline_args)
    argv = guest_argv(profile, image, initramfs, cmdline, port, scratch)
    console = scratch / "sshd-guest.console.log"
    with open(console, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_sshd(process, port, console, timeout)
        yield RunningGuest(process, port, console, argv)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_sshd(process: subprocess.Popen[bytes], port: int, console: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the sshd guest's QEMU exited ({process.returncode}): "
                                 + console.read_text(errors="replace")[-2000:])
        if READY in console.read_text(errors="replace"):
            # hostfwd accepts at once; sshd's banner says it really is there.
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as sock:
                sock.settimeout(5)
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return
        time.sleep(0.5)
    raise AssertionError(f"no sshd on 127.0.0.1:{port} after {timeout:.0f} s: "
                         + console.read_text(errors="replace")[-2000:])


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="hvo-sshd-guest-"))
