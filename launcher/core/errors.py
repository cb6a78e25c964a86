"""Every error type the launcher turns into a one-line message, and the process exit codes."""
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


class BadRecord(RuntimeError):
    """A dataset record a running job reads holds values no model can use (no atoms, NaN/inf positions, cell or
    labels), one line naming the file and the entry. Preflight refuses the records it samples as a ConfigError;
    one found while the run reads its data is a run-time failure (exit 1; the run directory stays resumable).

    Raised in a DataLoader worker, it comes back to the main process wrapped in torch's multi-line report;
    the one line is recovered from it, so the error reads the same with or without workers.
    """

    def __init__(self, message: str = "") -> None:
        text = str(message)
        if "Traceback" in text:  # torch's ExceptionWrapper.reraise: "Caught ... Original Traceback ... Name: line"
            last = text.strip().splitlines()[-1]
            text = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(text)


class NotImplementedBackend(RuntimeError):
    """A backend name with no registered implementation, or a task a backend does not run."""


class Preempted(Exception):
    """Raised by a trainer after it saved its checkpoint in answer to a preemption signal."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the run stops instead of writing garbage checkpoints."""


class BackendFailed(RuntimeError):
    """A native backend process failed (non-zero exit, or exit 0 without the outputs it should write)."""


class FairchemError(BackendFailed):
    """FairChem failed (non-zero exit, or exit 0 without the outputs it should have written)."""


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_PREEMPTED = 143  # a job stopped on a signal after checkpointing; SLURM/submitit run it again
