"""Mouse and keyboard input through xdotool (XTest underneath; it maps any character or keysym
name onto the keyboard, which is the hard part of typing). Key names are checked against X's
keysym table first, so a typo is a 400 naming the field instead of a silent no-op."""

from __future__ import annotations

import asyncio
import os

from Xlib import XK

from .bodies import BadRequestError

# xdotool's own modifier aliases, accepted besides keysym names
KEY_ALIASES = frozenset({"ctrl", "control", "alt", "shift", "super", "meta", "win", "cmd"})
SCROLL_BUTTONS = {"up": 4, "down": 5, "left": 6, "right": 7}
TYPE_DELAY_MS = 2
BASE_TIMEOUT_S = 10.0


class InputFailedError(Exception):
    pass


def check_key(name: str, field: str) -> str:
    """``name`` (a keysym such as ``Return``, or ``ctrl+c``) if every part is a known key."""
    for part in name.split("+"):
        if not part:
            raise BadRequestError(field, f"{name!r} has an empty key")
        if part.lower() in KEY_ALIASES or len(part) == 1 or XK.string_to_keysym(part) != 0:
            continue
        raise BadRequestError(field, f"{part!r} is not an X11 keysym name")
    return name


async def xdotool(*args: str, timeout_s: float = BASE_TIMEOUT_S) -> None:
    proc = await asyncio.create_subprocess_exec(
        "xdotool", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise InputFailedError(f"xdotool {args[0]} did not finish in {timeout_s:.0f}s") from None
    if proc.returncode != 0:
        raise InputFailedError(f"xdotool {args[0]} failed: {err.decode(errors='replace').strip()[:500]}")


async def move(x: int, y: int) -> None:
    await xdotool("mousemove", "--sync", str(x), str(y))


async def click(x: int | None, y: int | None, button: int) -> None:
    if x is not None and y is not None:
        await xdotool("mousemove", "--sync", str(x), str(y), "click", str(button))
    else:
        await xdotool("click", str(button))


async def drag(from_x: int, from_y: int, to_x: int, to_y: int, button: int) -> None:
    await xdotool(
        "mousemove", "--sync", str(from_x), str(from_y), "mousedown", str(button),
        "sleep", "0.05", "mousemove", "--sync", str(to_x), str(to_y),
        "sleep", "0.05", "mouseup", str(button),
    )  # fmt: skip


async def scroll(direction: str, amount: int) -> None:
    button = SCROLL_BUTTONS[direction]
    await xdotool("click", "--repeat", str(amount), "--delay", "10", str(button))


async def type_text(text: str) -> None:
    # a bound that grows with the text: xdotool waits TYPE_DELAY_MS between characters
    timeout_s = BASE_TIMEOUT_S + len(text) * (TYPE_DELAY_MS + 3) / 1000
    await xdotool("type", "--delay", str(TYPE_DELAY_MS), "--", text, timeout_s=timeout_s)


async def press(key: str) -> None:
    await xdotool("key", "--", key)


async def hotkey(keys: list[str]) -> None:
    await xdotool("key", "--", "+".join(keys))
