# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv when missing, installs medcf, runs the main job on the embedded default
#   make test   creates .venv when missing, installs medcf with its test extra, runs lint and the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned: on these machines the pinned version is a local CPU wheel, an unpinned one pulls CUDA.
TORCH := torch==2.13.0
DEMO_OUT ?= demo_output

.PHONY: demo test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/medcf demo --out $(DEMO_OUT) --overwrite

test: venv
	$(BIN)/ruff check medcf data_prep tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) mlflow.db mlruns
