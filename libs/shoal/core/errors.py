"""The error tree. ``retriable`` tells a caller whether trying again can help."""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""

    retriable: bool = False


class DefinitionInvalid(ShoalError):
    """A workflow definition was refused; ``problems`` name each place."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class Problem:
    """One thing wrong with a definition, at a path such as ``tasks[2].depends_on[0]``."""

    __slots__ = ("message", "path")

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class MessageInvalid(ShoalError):
    """An inbound message could not be decoded or does not match its schema."""


class StreamConflict(ShoalError):
    """Another writer appended to the same instance stream first: fence and reload."""

    retriable = True
