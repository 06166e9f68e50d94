"""The one error family of moemerge; the CLI maps each class to an exit code."""


class MoemergeError(Exception):
    """Base class; `exit_code` is what the CLI exits with (2 = bad input, 1 = anything else)."""

    exit_code = 1

    def __init__(self, message: str, *, problems: list[str] | None = None):
        self.problems = problems or [message]
        super().__init__(message)


class ConfigError(MoemergeError, ValueError):
    """The YAML config or a command-line argument is wrong."""

    exit_code = 2


class SourceError(MoemergeError, OSError):
    """A model named in the config cannot be found or read (missing, corrupt, incomplete)."""

    exit_code = 2


class IncompatibleModelsError(MoemergeError, ValueError):
    """The models cannot be merged into the requested output (shapes, families, prompts)."""

    exit_code = 2


class OutputError(MoemergeError, OSError):
    """The output folder cannot be written (exists, unwritable, disk full)."""

    exit_code = 2


class MergeFailedError(MoemergeError, RuntimeError):
    """Something went wrong while computing or writing the merge."""

    exit_code = 1


class PushError(MoemergeError, RuntimeError):
    """Publishing to the Hugging Face Hub failed (no token, no permission, network)."""

    exit_code = 1


def problems_error(cls: type[MoemergeError], problems: list[str]) -> MoemergeError:
    """One exception carrying every problem found; its message is the problems joined."""
    return cls("; ".join(problems), problems=problems)
