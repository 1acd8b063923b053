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


async def select_run(pilot, app, run_name: str) -> None:
    """Move Home's cursor to the run whose directory is `run_name`."""
    from textual.widgets import DataTable

    table = app.screen.query_one("#runs-table", DataTable)
    await wait_until(pilot, lambda: table.row_count > 0)
    keys = [str(table.coordinate_to_cell_key((row, 0)).row_key.value) for row in range(table.row_count)]
    table.move_cursor(row=next(i for i, key in enumerate(keys) if key.endswith(run_name)))
    await pilot.pause(0.05)
