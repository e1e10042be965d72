# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The one place torch is pinned for the project's venv. A GPU user picks another
# build with e.g.  make test TORCH_SPEC="torch==2.5.1" PIP_EXTRA_INDEX_URL=<PyTorch CUDA index>
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# One thread per process and passive OpenMP waiting: avoids 5-15x slowdowns
# when several torch processes share two cores.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gan-monitor demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs build dist *.egg-info .pytest_cache
