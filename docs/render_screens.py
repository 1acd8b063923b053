"""Regenerate the README's screenshots (docs/screens/*.png) from the SVG snapshots the test suite pins, plus the
monitor with probes (captured here at 120×40). Needs `rsvg-convert` (Debian/Ubuntu: librsvg2-bin).
`monitor-dpo.png` is not redrawn here: it is the README's demo DPO run, captured from that run directory.

    make test                      # or: pytest tests/tui/test_snapshots.py --snapshot-update
    .venv/bin/python docs/render_screens.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = REPO / "tests" / "tui" / "__snapshots__" / "test_snapshots"
SCREENS = REPO / "docs" / "screens"

FROM_SNAPSHOTS = {  # README picture ← the test's snapshot
    "home": "test_home_snapshot",
    "monitor": "test_monitor_gpu_session_snapshot",
    "monitor-80x24": "test_monitor_fits_80x24",
    "monitor-light": "test_light_theme_snapshot",
    "new-run": "test_new_run_snapshot",
    "compare": "test_compare_snapshot",
    "dataset": "test_dataset_screen_snapshot",
    "eval": "test_eval_screen_snapshot",
    "export": "test_export_dialog_snapshot",
    "chat": "test_chat_side_by_side_snapshot",
    "chat-blind": "test_chat_blind_rated_snapshot",
}


def to_png(svg_text: str, target: Path) -> None:
    """Textual writes each styled run as its own <text>; without xml:space="preserve" librsvg drops the spaces that
    start a run, so 'loss 0.28  eval' would read 'loss 0.28eval'."""
    with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as handle:
        handle.write(svg_text.replace("<svg ", '<svg xml:space="preserve" ', 1))
    subprocess.run(["rsvg-convert", handle.name, "-o", str(target)], check=True)
    Path(handle.name).unlink()


async def monitor_with_probes() -> str:
    sys.path.insert(0, str(REPO))
    from tui.app import LoradeckApp

    app = LoradeckApp(runs_dir=REPO / "sample_data" / "runs", attach_to=REPO / "sample_data" / "runs" / "demo-evaluated")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(1.0)
        return app.export_screenshot()


def main() -> int:
    SCREENS.mkdir(parents=True, exist_ok=True)
    for picture, snapshot in FROM_SNAPSHOTS.items():
        to_png((SNAPSHOTS / f"{snapshot}.svg").read_text(encoding="utf-8"), SCREENS / f"{picture}.png")
        print(f"docs/screens/{picture}.png  ← {snapshot}")
    to_png(asyncio.run(monitor_with_probes()), SCREENS / "monitor-probes.png")
    print("docs/screens/monitor-probes.png  ← demo-evaluated at 120×40")
    return 0


if __name__ == "__main__":
    sys.exit(main())
