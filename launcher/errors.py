"""Errors the launcher turns into one-line messages and exit codes."""
from __future__ import annotations


class ConfigError(ValueError):
    """Bad configuration or input: one line naming the key or file and what was expected.

    The CLI prints ``error: <message>`` and exits with :data:`EXIT_CONFIG`; nothing has been
    written to any run directory when it is raised.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ConfigErrors(ConfigError):
    """Several configuration problems found together (preflight lists all, not only the first)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class NotImplementedBackend(RuntimeError):
    """A backend/task pair that is declared in the schema but not built yet."""


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
