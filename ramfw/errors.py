"""Errors a user can see. Each class maps to a CLI exit code; str(err) is one actionable line."""

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3


class RamfwError(Exception):
    """Base for every error ramfw reports to a user."""

    exit_code = EXIT_RUNTIME


class PolicyError(RamfwError):
    """A policy failed to load or validate. Carries every problem found, not just the first."""

    exit_code = EXIT_USAGE

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems  # [(key, reason)]
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {key}: {reason}" for key, reason in self.problems]


class UsageError(RamfwError):
    exit_code = EXIT_USAGE


class BackendError(RamfwError):
    """The kernel refused a change, or a backend cannot run here."""


class NetnsError(RamfwError):
    """The requested network namespace cannot be entered."""
