"""No third-party warning or log line reaches a person's terminal: it goes to a log file (or to stderr with --debug).

A stand-in for a noisy library — the warning bitsandbytes logs at import on CPUs with AVX-512 BF16, plus a Python
UserWarning — fires the moment the CLI first imports transformers (a `sitecustomize` import hook on PYTHONPATH), so
the test behaves the same on every CPU.
"""

import os
import subprocess

import pytest

from tests.conftest import LORADECK, REPO, SAMPLE_DATA

NOISE = "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'"
NOISY_LIBRARY = f'''
import logging, sys, warnings

class _NoisyOnFirstImport:
    fired = False

    def find_spec(self, name, path=None, target=None):
        if name == "transformers" and not self.fired:
            self.fired = True
            logging.getLogger("bitsandbytes.backends.cpu.ops").warning({NOISE!r})
            warnings.warn("a noisy library's UserWarning", UserWarning)
        return None

sys.meta_path.insert(0, _NoisyOnFirstImport())
'''


@pytest.fixture
def noisy_env(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NOISY_LIBRARY)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), str(REPO)]), XDG_CACHE_HOME=str(tmp_path / "cache"))
    return env, tmp_path / "cache" / "loradeck" / "loradeck.log"


def run(env, *arguments):
    return subprocess.run(LORADECK + list(arguments), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_cli_error_stays_one_line_when_a_library_is_noisy(noisy_env, tiny_model_dir, tmp_path):
    env, log = noisy_env
    result = run(env, "chat", "--base", str(tiny_model_dir), "--adapter", str(tmp_path / "missing"), "--prompt", "hi")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such folder" in result.stderr
    assert NOISE in log.read_text() and "UserWarning" in log.read_text()  # kept, in the log


def test_a_clean_inspect_writes_nothing_to_stderr_and_debug_shows_the_chatter(noisy_env, tiny_model_dir):
    env, log = noisy_env
    quiet = run(env, "inspect", str(SAMPLE_DATA / "demo_train.jsonl"), "--model", str(tiny_model_dir))
    assert quiet.returncode == 0 and "findings" in quiet.stdout
    assert quiet.stderr == ""
    assert NOISE in log.read_text()
    loud = run(env, "--debug", "inspect", str(SAMPLE_DATA / "demo_train.jsonl"), "--model", str(tiny_model_dir))
    assert loud.returncode == 0 and NOISE in loud.stderr  # the hook really fired: routing is what hid it


def test_inspect_and_a_plain_chat_never_import_bitsandbytes(tiny_model_dir):
    code = ("import sys\nfrom tui.cli.main import main\n"
            f"main(['inspect', {str(SAMPLE_DATA / 'demo_train.jsonl')!r}, '--model', {str(tiny_model_dir)!r}, "
            "'--json'])\n"
            f"main(['chat', '--base', {str(tiny_model_dir)!r}, '--prompt', 'hi', '--max-new-tokens', '2'])\n"
            "from peft import LoraConfig, get_peft_model\n"  # peft still works without it
            "print('BNB', sys.modules.get('bitsandbytes'))")
    result = subprocess.run([os.sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "BNB None" in result.stdout, result.stderr[-2000:]
