"""Errors that the CLI turns into one line and an exit code, never a traceback (unless ``--debug``)."""

from typing import Optional

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1


class ChipbenchError(Exception):
    """Base of chipbench's expected errors: the message names the problem, ``fix`` says what to do."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, problem: str, fix: Optional[str] = None) -> None:
        if fix is None and "Original Traceback" in problem:
            # re-raised by torch's DataLoader from a worker process: keep the original line
            last = [line for line in problem.strip().splitlines() if line.strip()][-1]
            problem = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The problem and its fix as one line, as the CLI prints it."""
        text = self.problem.replace("\n", " ").strip()
        if self.fix:
            text = "{}; {}".format(text.rstrip("."), self.fix.replace("\n", " ").strip())
        return text


class UserError(ChipbenchError):
    """Bad input from the user: unknown vendor, missing data, broken YAML, bad value (exit code 2)."""


class PluginError(ChipbenchError):
    """A plugin failed to load, or a hook of the chosen vendor raised or returned the wrong type."""


class RunFailed(ChipbenchError):
    """A run started but did not finish: a worker died, a rank hung, a loss became non-finite."""

    exit_code = EXIT_RUN_FAILED
