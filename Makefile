# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
TLSTM := $(VENV)/bin/tlstm

.PHONY: install demo test lint bench data-ucf11 clean

UCF11_RAW ?= data/ucf11_raw
UCF11_CACHE ?= data/ucf11

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install  ## a real, small training run (addition task, CPU, ~1 minute), then its run dir and metrics
	$(TLSTM) train experiment=demo

test: install  ## lint, then the test suite (what CI runs)
	$(VENV)/bin/ruff check tensorlstm tests scripts
	OMP_NUM_THREADS=1 WANDB_MODE=disabled $(PY) -m pytest tests -q

lint: install
	$(VENV)/bin/ruff check tensorlstm tests scripts

bench: install  ## speed of maps and cells, as ratios to dense baselines measured in the same run
	$(TLSTM) bench --out docs/speed.md

data-ucf11: install  ## download + extract UCF11 (needs internet and unrar/7z), decode it into the frame cache (resumable)
	$(PY) scripts/prepare_ucf11.py --download --source $(UCF11_RAW) --out $(UCF11_CACHE)

clean:
	rm -rf outputs multirun wandb .pytest_cache
