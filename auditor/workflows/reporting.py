"""How a long job reports progress: the CLI passes a rich implementation, library callers `Silent`."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, description: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def status(self, message: str) -> None: ...


class Silent:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def status(self, message: str) -> None:
        pass
