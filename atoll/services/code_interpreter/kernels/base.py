"""What the contexts need from a kernel, whatever its language."""

from __future__ import annotations

from typing import Literal, Protocol

from ..outputs import Execution

Language = Literal["python", "typescript"]

STATE_LOST = "the kernel was restarted: variables, imports and definitions of this context are gone"
RESTART_NEXT = "it is restarted by the next call, without this context's variables, imports and definitions"


class Kernel(Protocol):
    language: Language

    async def start(self) -> None:
        """Starts the kernel process and waits until it answers."""

    async def execute(self, code: str, out: Execution, *, env_vars: dict[str, str], timeout_s: float) -> None:
        """Runs ``code``, feeding ``out``; a timeout or ``out.cancelled`` interrupts it.

        Never raises for a failure of the code or of the kernel: that is ``out.error``. A kernel
        that died is restarted by the next call.
        """

    async def shutdown(self) -> None:
        """Stops the kernel process and removes its files."""
