# JoinDet: set-up, tests and the demo. `make test` and `make demo` install what they need.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.joindet-installed
D2_VERSION := 0.7.2
D2_WHEELS  := $(VENV)/wheels
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: all setup test demo clean-venv

all: test

setup: $(STAMP)

# One stamp file guards the whole install: re-running `make test` on a set-up machine installs nothing.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" wheel "setuptools>=61"  # setuptools: the wheel test builds with it
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	# Detectron2 (docs/design.md, "Dependencies"): PyPI's sal-detectron2 carries upstream's Python code as a
	# py3.10 wheel; re-tag it as pure Python. Its compiled _C is optional and not loaded on 3.11.
	rm -rf $(D2_WHEELS) && mkdir -p $(D2_WHEELS)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
		-d $(D2_WHEELS) sal-detectron2==$(D2_VERSION)
	mv $(D2_WHEELS)/sal_detectron2-$(D2_VERSION)-*.whl $(D2_WHEELS)/sal_detectron2-$(D2_VERSION)-py3-none-any.whl
	$(PY) -m pip install -q -c constraints.txt Pillow matplotlib pycocotools termcolor yacs tabulate \
		cloudpickle tqdm tensorboard "numpy<2" omegaconf hydra-core black packaging
	$(PY) -m pip install -q --no-deps $(D2_WHEELS)/sal_detectron2-$(D2_VERSION)-py3-none-any.whl
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	$(PY) -c "import detectron2, torch, joindet; print('detectron2', detectron2.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) -m joindet.demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
