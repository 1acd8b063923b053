"""The CLI in pipelines: a reader that goes away (`loradeck status RUN | head`) ends it quietly."""

import subprocess

from tests.conftest import LORADECK, REPO, SAMPLE_DATA


def test_a_reader_that_goes_away_leaves_stderr_empty():
    process = subprocess.Popen(LORADECK + ["status", str(SAMPLE_DATA / "runs" / "demo-finished"), "--json"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the command writes a byte
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 1
    assert stderr == ""
