# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv when missing, installs medcf, runs the main job on the embedded default:
#               counterfactual inference of both bundles on their sample DICOMs with the demo weights
#   make test   creates .venv when missing, installs medcf with its test extra, runs lint and the test suite
#               (two pytest workers with one torch thread each: two 2-thread workers on 2 cores run slower than one)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned: on these machines the pinned version is a local CPU wheel, an unpinned one pulls CUDA.
TORCH := torch==2.13.0
DEMO_OUT ?= demo_output

.PHONY: demo phantoms test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python -m monai.bundle run --config_file bundles/cxr_counterfactual/configs/inference.yaml \
		--output_dir $(DEMO_OUT)/counterfactuals_cxr
	$(BIN)/python -m monai.bundle run --config_file bundles/mammo_counterfactual/configs/inference.yaml \
		--output_dir $(DEMO_OUT)/counterfactuals_mammo

phantoms: venv
	$(BIN)/medcf demo --out $(DEMO_OUT)/phantoms --overwrite

test: venv
	$(BIN)/ruff check medcf data_prep tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10

clean:
	rm -rf $(VENV) $(DEMO_OUT) mlflow.db mlruns
