#!/usr/bin/env bash
# Install the Debian packages the harness needs on a bookworm host. Idempotent and
# non-interactive (CI runs as root with no stdin). QEMU >= 10 (loongarch64 direct boot)
# and clang-19 (LoongArch kernels, nolibc helpers) come from bookworm-backports.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

BACKPORTS_LIST=/etc/apt/sources.list.d/hvo-harness-backports.list
BACKPORTS_LINE="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main"

# Packages from bookworm proper. The vng boot backend (virtme-ng, from PyPI into the venv)
# adds none: its guest's root is this host's / over QEMU's built-in 9p (vng is run with
# --force-9p; bookworm has no virtiofsd), the guest runs the harness's static busybox (no
# busybox-static here), and vng reads the kernel's version with `file`.
BASE_PACKAGES=(git make python3 python3-venv zstd xz-utils cpio rsync ccache flex bison bc
  libelf-dev libssl-dev gcc gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu dwarves
  debian-archive-keyring ca-certificates file)
# The SSH target's boot tests (tests/sshd_guest.py): `ssh-keygen` makes each test's client and
# host keys (openssh-client), `readelf` finds what libraries sshd needs in its guest (binutils).
BASE_PACKAGES+=(openssh-client binutils)
# `export lava` (harness/targets/lava.py): LAVA's job and device schemas (lava-common, with PyYAML) in
# Debian's python3, which the harness runs as /usr/bin/python3 (the venv does not see them), and
# lava-dispatcher's `lava-run` for `export lava --run` and the dispatcher test. lava-dispatcher
# enables a lava-worker service, which the harness does not use (it needs a lava-server).
BASE_PACKAGES+=(lava-common lava-dispatcher python3-yaml)
# Packages from bookworm-backports.
BACKPORTS_PACKAGES=(qemu-system-x86 qemu-system-misc clang-19 lld-19 llvm-19)

missing=()
for pkg in "${BASE_PACKAGES[@]}" "${BACKPORTS_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
qemu_major=$( (dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true) | sed -E 's/^([0-9]+:)?([0-9]+).*/\2/')
if [ -n "$qemu_major" ] && [ "$qemu_major" -lt 10 ]; then missing+=(qemu-system-x86); fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "host packages: all present"
  exit 0
fi
echo "host packages: installing ${missing[*]}"

if [ ! -f "$BACKPORTS_LIST" ] || ! grep -qF "$BACKPORTS_LINE" "$BACKPORTS_LIST"; then
  echo "$BACKPORTS_LINE" | $SUDO tee "$BACKPORTS_LIST" >/dev/null
fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${BASE_PACKAGES[@]}"
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS_PACKAGES[@]}"
