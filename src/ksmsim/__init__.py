"""ksmsim: an executable model of Linux Kernel Samepage Merging."""

__version__ = "0.1.0"
