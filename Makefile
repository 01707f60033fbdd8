# kvpr: the two commands the README starts with are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: demo test build lint
build:
	$(CARGO) build --release

demo: build
	./target/release/kvpr plan --model preset:llama-2-7b --hardware plans/hardware/a100-pcie4.json --batch 8 --prompt-len 4096 --gen-len 64 --out target/demo-plan.json

test:
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
