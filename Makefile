# The two commands of the README: `make run` and `make test`. Each creates .venv on first use.
# The Python that creates .venv: PYTHON=... if given, else the first of these that runs and is
# 3.11 or newer. Running it is the test: a name on PATH is not enough (pyenv installs shims
# for versions that are not installed, and they fail when run).
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3
ifndef PYTHON
PYTHON := $(shell for candidate in $(PYTHON_CANDIDATES); do \
	version=$$($$candidate --version 2>/dev/null) || continue; \
	case "$$version" in ("Python 3.1"[1-9]*|"Python 3."[2-9][0-9]*) echo $$candidate; break;; esac; \
	done)
endif
NO_PYTHON := no Python 3.11 or newer runs here (tried $(PYTHON_CANDIDATES)); give PYTHON=/path/to/python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# One thread count for every run, so timings and results are comparable between runs (make
# test's two pytest processes, and the notebook kernels they start, use one each: conftest.py).
export OMP_NUM_THREADS ?= 2
# The notebooks run on the project kernel: put .venv first on PATH for jupyter and make.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test lab docs student clean print-python mcu-tools

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || { test -n "$(PYTHON)" || { echo "$(NO_PYTHON)" >&2; exit 1; }; \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(INSTALLED)

## run: execute every notebook in order, in place (figures go to figures/), then build the docs
run: $(INSTALLED)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=600 --ExecutePreprocessor.kernel_name=python3 $(NOTEBOOKS)
	# Keep only the final state of each progress bar (tqdm redraws its line with \r).
	$(BIN)/jupyter nbconvert --coalesce-streams --inplace $(NOTEBOOKS)
	$(MAKE) docs

## docs: render the executed notebooks (not re-run) and docs/*.md into a static HTML site
docs: $(INSTALLED)
	$(BIN)/sphinx-build -b html -c docs . docs/_build/html
	@echo "Open docs/_build/html/index.html in a browser."

## test: ruff, the unit tests and nbval over the notebooks, in two processes (pytest-xdist; a
## file or notebook stays in one process, see conftest.py)
test: $(INSTALLED)
	$(BIN)/ruff check ptqlib tests benchmarks docs tools conftest.py
	$(BIN)/pytest tests notebooks -n 2 --dist loadfile --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg

## lab: open JupyterLab in the project's environment
lab: $(INSTALLED)
	$(BIN)/jupyter lab notebooks/

## student: the notebooks without solutions and outputs, in student/ (to hand out)
student: $(INSTALLED)
	$(BIN)/python tools/make_student.py --out student

## mcu-tools: the Arm cross-compiler and QEMU that notebook 11 builds and runs firmware with
MCU_PACKAGES := gcc-arm-none-eabi qemu-system-arm
MCU_ELSEWHERE := install arm-none-eabi-gcc (Arm GNU Toolchain, or brew install arm-none-eabi-gcc) \
	and qemu-system-arm (qemu.org, or brew install qemu), then check: make mcu-tools
mcu-tools:
	@if command -v arm-none-eabi-gcc >/dev/null && command -v qemu-system-arm >/dev/null; then \
		echo "arm-none-eabi-gcc and qemu-system-arm are installed"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y --no-install-recommends $(MCU_PACKAGES); \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
		sudo apt-get update && sudo apt-get install -y --no-install-recommends $(MCU_PACKAGES); \
	else \
		echo "no apt-get here: $(MCU_ELSEWHERE)" >&2; exit 1; \
	fi

## print-python: the Python that would create .venv (see PYTHON above)
print-python:
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)" >&2; exit 1; }
	@echo $(PYTHON)

clean:
	rm -rf $(VENV) artifacts results docs/_build student
