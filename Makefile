# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: demo test env

env: $(READY)

# torch first (pinned builds from constraints.txt), then sam2, whose source
# build imports torch and so needs --no-build-isolation; its CUDA extension
# is optional and skipped. Then the package itself with its test extras.
$(READY): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "setuptools>=68" wheel
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q -c constraints.txt --no-build-isolation sam2==1.1.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(READY)

demo: $(READY)
	$(BIN)/labeler demo --out demo-out

# pytest exits 5 when it collects no test; that is not a failure of the clone.
test: $(READY)
	$(BIN)/python -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc
