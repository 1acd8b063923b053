"""engine/ never imports Textual or Rich; tui/ never imports the torch stack at import time."""

import json
import subprocess
import sys

from tests.conftest import REPO



def package_modules(package: str) -> list[str]:
    """Every module of a package, found on disk so new modules are covered without editing this test."""
    root = REPO / package
    return [".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for path in sorted(root.rglob("*.py")) if path.name != "__main__.py"]  # __main__ runs the program


ENGINE_MODULES = package_modules("engine")
TUI_MODULES = package_modules("tui") + ["themes"]


def loaded_modules_after_import(modules: list[str]) -> set[str]:
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_engine_imports_neither_textual_nor_rich():
    loaded = top_level(loaded_modules_after_import(ENGINE_MODULES))
    assert not loaded & {"textual", "rich"}


def test_tui_does_not_import_the_torch_stack():
    loaded = top_level(loaded_modules_after_import(TUI_MODULES))
    assert not loaded & {"torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate"}


def test_engine_imports_no_heavy_library_at_import_time():
    """Heavy libraries load inside the functions that need them, so `loradeck --help` and the TUI start at once."""
    loaded = top_level(loaded_modules_after_import(ENGINE_MODULES))
    assert not loaded & {"torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate"}
