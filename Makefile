# mlakit: two commands to start.  `make lab` opens the course, `make test` checks it.
# Everything installs into .venv; the system Python is never touched.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
KERNEL := mlakit
PORT   ?= 8888
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)  # Jupyter refuses root unless told (containers)
# Busy-waiting OpenMP threads slow torch many times over when the 2 cores are shared; results are unchanged.
export OMP_WAIT_POLICY ?= PASSIVE
BENCHES := bench/mla_decode.py bench/moe_dispatch.py bench/generate.py bench/kv_cache.py bench/dedup.py bench/grpo.py \
	bench/gpu_kernels.py bench/ep.py
# pytest-xdist workers for make test; --dist loadscope keeps each notebook on one worker (nbval needs it)
JOBS   ?= 2
# The Chromium the browser tests drive (Debian/Ubuntu: apt-get install chromium); without it they skip
export MLAKIT_CHROMIUM ?= /usr/bin/chromium
SITE_STAMP := $(VENV)/.installed-site
NBVAL_FLAGS := --nbval-lax --nbval-current-env --nbval-cell-timeout=300 --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: help venv lab test test-fast test-unit test-notebooks lint notebooks exercises grade bench doctor clean \
	site test-browser experiments

help:
	@echo "make lab        open the course in JupyterLab (creates .venv on first use)"
	@echo "make test       lint, unit tests and notebook validation (every lesson and solution, once)"
	@echo "make test-fast  lint and unit tests, no notebook execution (the inner loop)"
	@echo "make site       build the course website from the executed notebooks: build/site/_build/html"
	@echo "make test-browser  only the browser tests (JupyterLab, mlakit dashboard, the site) in Chromium"
	@echo "make notebooks  re-execute notebooks/ and solutions/ in place, then rebuild exercises/ (authors)"
	@echo "make exercises  regenerate exercises/ from solutions/"
	@echo "make grade NB=exercises/01_attention_and_kv_cache.ipynb   grade a notebook"
	@echo "make experiments  rerun the long experiments whose results lessons 10 and 11 plot (about an hour)"
	@echo "make bench      run the benchmarks in bench/"
	@echo "make doctor     check the environment"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" numpy
	$(BIN)/python -m pip install --quiet -e ".[course,dev,browser]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "mlakit (.venv)" >/dev/null
	@touch $(STAMP)

venv: $(STAMP)

doctor: $(STAMP)
	$(BIN)/mlakit doctor

lab: $(STAMP)
	@token=$$($(BIN)/python -c "import secrets; print(secrets.token_hex(16))"); \
	echo ""; echo "  mlakit course: http://127.0.0.1:$(PORT)/lab/tree/notebooks/00_welcome.ipynb?token=$$token"; echo ""; \
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) --ServerApp.port_retries=0 \
		--IdentityProvider.token=$$token --ServerApp.root_dir=$(CURDIR) $(ROOT_FLAG) notebooks/00_welcome.ipynb

lint: $(STAMP)
	$(BIN)/ruff check mlakit tests bench scripts experiments

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -q

test-fast: $(STAMP)
	$(BIN)/ruff check mlakit tests bench scripts experiments
	MLAKIT_PROGRESS=0 $(BIN)/python -m pytest -q -n $(JOBS) -m "not notebooks and not browser" tests

test-notebooks: $(STAMP)
	$(BIN)/python -m pytest -q $(NBVAL_FLAGS) notebooks solutions

test: $(STAMP)
	@test -x $(MLAKIT_CHROMIUM) || echo "make test: no Chromium at $(MLAKIT_CHROMIUM): the browser tests will be SKIPPED (apt-get install chromium)"
	@test -f build/site/_build/html/index.html || echo "make test: no site built: its browser test will be SKIPPED (make site)"
	@start=$$(date +%s); \
	$(BIN)/ruff check mlakit tests bench scripts experiments && \
	MLAKIT_PROGRESS=0 $(BIN)/python -m pytest -q -n $(JOBS) --dist loadscope tests $(NBVAL_FLAGS) notebooks solutions; \
	status=$$?; \
	echo "make test: wall time $$(( $$(date +%s) - start )) s"; \
	exit $$status

test-browser: $(STAMP)
	MLAKIT_PROGRESS=0 $(BIN)/python -m pytest -q -m browser tests/browser

$(SITE_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[site]"
	@touch $(SITE_STAMP)

# The notebooks as committed (no re-execution), warnings as errors
site: $(SITE_STAMP)
	$(BIN)/python scripts/build_site.py --strict

notebooks: $(STAMP)
	$(BIN)/python scripts/run_notebooks.py notebooks/*.ipynb $(wildcard solutions/*.ipynb)
	$(BIN)/mlakit exercises build

exercises: $(STAMP)
	$(BIN)/mlakit exercises build

grade: $(STAMP)
	$(BIN)/mlakit grade $(NB)

# Runs too long for a lesson: they rewrite experiments/results/*.csv, which lessons 10 and 11 read
experiments: $(STAMP)
	$(BIN)/python experiments/grpo_sweep.py
	$(BIN)/python experiments/rl_costs.py all

bench: $(STAMP)
	@# OpenMP's default wait policy: the passive one exported above for shared test machines adds a
	@# thread wake-up to every small op, which is what decode steps are made of. Run on a quiet machine.
	@for f in $(BENCHES); do echo "== $$f"; env -u OMP_WAIT_POLICY $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
