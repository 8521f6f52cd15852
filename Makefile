# folo_edu: `make lab` to learn, `make test` to check everything.
#
# The venv is built once and rebuilt only when pyproject.toml changes (stamp file).
# torch is installed before the project so that pip never picks a build for us:
#   no NVIDIA GPU -> the CPU build, pinned (TORCH_SPEC=torch==2.13.0)
#   NVIDIA GPU    -> a CUDA build from PyPI (TORCH_SPEC=torch)
# Override with e.g. make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
STAMP := $(VENV)/.folo_edu-installed
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
# Triton: a CUDA torch brings its own matching triton. A CPU machine gets it too, so
# that the Triton kernels run (in Triton's interpreter) in the tests and notebook 06.
ifeq ($(HAS_GPU),yes)
TORCH_SPEC ?= torch
TRITON_SPEC ?=
else
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.8.0
endif
PYTEST_WORKERS ?= 2
# The hub is unreachable on the course machines; fail fast instead of timing out.
# (`make lab HF_HUB_OFFLINE=0` lets the notebooks reach the hub where it is reachable.)
HF_HUB_OFFLINE ?= 1
export HF_HUB_OFFLINE

.PHONY: install lab test demo download clean student
.PHONY: browser-test

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@if $(VENV)/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)"; \
	then echo "torch already in $(VENV), keeping it"; \
	else echo "installing $(TORCH_SPEC)"; $(VENV)/bin/pip install $(TORCH_SPEC); fi
	@if [ -n "$(TRITON_SPEC)" ]; then $(VENV)/bin/pip install $(TRITON_SPEC); fi
	$(VENV)/bin/pip install -e '.[dev]'
	@touch $@

download: install
	$(VENV)/bin/folo-edu download

# Jupyter refuses to run as root unless told; course and CI machines run as root.
lab: download
	$(VENV)/bin/jupyter lab --no-browser --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# One pytest run over tests/ and notebooks/: any failure, or no test collected
# (pytest's exit code 5), fails make.
# One torch thread per pytest worker: 2 workers x 2 threads on 2 cores would make every
# small op wait on spinning threads (we measured tiny matmuls 100x slower that way).
test: download
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -n $(PYTEST_WORKERS) -rs --durations=10 tests notebooks --nbmake

# The widget notebooks in JupyterLab in a real browser (scripts/browser_test.py): run all
# cells, check the plots and widgets, move a slider. Needs Debian's chromium (installed
# with apt when missing, as root) and the playwright package, which only drives it:
# never `playwright install`, nothing downloads a browser.
PLAYWRIGHT_SPEC ?= playwright==1.65.2
browser-test: download
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	@$(VENV)/bin/python -c "import playwright" 2>/dev/null || $(VENV)/bin/pip install $(PLAYWRIGHT_SPEC)
	$(VENV)/bin/python scripts/browser_test.py

# Learner copies of the notebooks in student/: cells tagged `solution` removed, outputs
# cleared (nbconvert's TagRemovePreprocessor and ClearOutputPreprocessor).
student: install
	$(VENV)/bin/python -m folo_edu.labs.student --src notebooks --out student

demo: download
	$(VENV)/bin/folo-edu generate "The capital of France is" --max-tokens 32
	echo "What is the capital of France?" | $(VENV)/bin/folo-edu chat

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
	@echo "kept the model cache: $${FOLO_EDU_CACHE:-$$HOME/.cache/folo_edu}"
