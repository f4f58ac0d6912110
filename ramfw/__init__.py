"""ramfw: registry access management enforced in the Linux kernel."""

__version__ = "0.1.0"
