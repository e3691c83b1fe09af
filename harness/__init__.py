"""hvo-harness: boot real kernels under QEMU and judge HugeTLB Vmemmap Optimization."""

__version__ = "0.1.0"
