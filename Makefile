# The README's two commands: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-unit test-integration test-acceptance bench bench-real-scale venv clean

venv: $(STAMP)

# CPU torch first (a plain `torch` requirement would pull a multi-GB CUDA build),
# then the project with its dev extra; a range in pyproject.toml that 2.13.0 satisfies installs nothing more.
# The installers' output goes to .venv/install.log (shown only when a step fails).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV): pip, torch 2.13.0 (CPU), the project and its dev extra (log: $(VENV)/install.log)"
	@( $(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet torch==2.13.0 \
	   && $(PY) -m pip install --quiet -e '.[dev]' ) > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m probes.run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the tiers (tests/conftest.py TIERS): `make test` runs all three
test-unit test-integration test-acceptance: test-%: $(STAMP)
	$(PY) -m pytest -q -m $* $(PYTEST_ARGS)

# the small-model benchmarks; the 1.5B-shaped one writes a 12 GB pair and runs for about an hour on 2 cores
bench: $(STAMP)
	@for f in benchmarks/*.py; do [ $$f = benchmarks/real_scale.py ] && continue; echo "== $$f"; $(PY) $$f || exit 1; done

bench-real-scale: $(STAMP)
	$(PY) benchmarks/real_scale.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
