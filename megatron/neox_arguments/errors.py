"""ConfigError: every configuration problem the loader finds, in one exception."""
from __future__ import annotations


class ConfigError(ValueError):
    """The configuration cannot be used; each problem says which key to change and how.

    The loader collects all problems it can find before raising, so one run shows them all.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = f"invalid configuration: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid configuration ({len(self.problems)} problems):\n{lines}"
        super().__init__(message)
