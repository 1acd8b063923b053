"""Small helpers for driving screens through Textual's pilot."""

import time


async def wait_until(pilot, condition, timeout=90.0):
    """Let the app run until `condition()` holds; fail after `timeout` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for the screen")
        await pilot.pause(0.05)


async def type_text(pilot, text):
    """Type `text` key by key, as a person would."""
    for char in text:
        await pilot.press("space" if char == " " else char)
