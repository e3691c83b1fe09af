"""The one error type a user sees: a set-up or usage problem, told in one line with its fix."""


class HarnessError(Exception):
    """A problem with the input or the host that the user must fix; the CLI exits 2 with it.

    The message is one line and names the fix, e.g.
    "qemu-system-riscv64 not found: install it with `make deps` (Debian: qemu-system-misc)".
    """


class KernelUnavailable(HarnessError):
    """The Debian suite (or package) asked for has no kernel for this arch, e.g. experimental
    for riscv64. Not a set-up error of the run: the matrix records that arch's boots as verdict
    "skip" with `reason`, and boots the rest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DebugInfoUnavailable(HarnessError):
    """A kernel's debug info (Debian's linux-image-<release>-dbg at the image's version) cannot
    be had: no suite has that package at that version, or its download failed. Not fatal to a
    run: whoever wanted sizes from it (harness/structpage.py) says "not measured" with
    `reason`, which names the package and version."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
