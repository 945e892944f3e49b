# The two commands of the README:
#   make demo   set up, then run the Procfile (monitor + demo trainer); ends by itself, artifacts in outputs/
#   make test   set up, then run the test suite
# and, while developing:
#   make check  the fast unit layer: every test but those marked slow (they start processes or run a fit)
# Both create ./.venv on first use and install the project with everything it needs into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[demo,test,tensorboard]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf outputs/digits-demo monitor_spool/digits-demo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start

test: $(STAMP)
	$(BIN)/python -m pytest

check: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) outputs replay
