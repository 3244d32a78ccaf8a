# data-exporter: build, run and test. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
WASM_OUT := plugins/target/$(WASM_TARGET)/release
LISTEN ?= 0.0.0.0:6780

.PHONY: help build host plugins run test test-unit test-deps test-servers test-servers-down lint fmt clean wasm-target bench k8s-check fuzz language-plugins console-deps screenshots otlp-venv

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

build: host plugins ## Release host at target/release/data-exporter, shipped plugins at target/plugins/*.wasm

host: ## Build the host (release)
	$(CARGO) build --release -p data-exporter

plugins: wasm-target ## Build the plugin components: shipped ones to target/plugins, test fixtures to target/test-plugins
	$(CARGO) build --release --target $(WASM_TARGET) --manifest-path plugins/Cargo.toml --workspace
	mkdir -p target/plugins target/test-plugins
	cp $(WASM_OUT)/opensearch.wasm $(WASM_OUT)/file.wasm $(WASM_OUT)/stdout.wasm $(WASM_OUT)/http.wasm $(WASM_OUT)/exporter.wasm \
	  $(WASM_OUT)/kafka.wasm target/plugins/
	cp $(WASM_OUT)/readme_example.wasm $(WASM_OUT)/hostile.wasm $(WASM_OUT)/discard.wasm $(WASM_OUT)/stuck_info.wasm \
	  $(WASM_OUT)/legacy_v1.wasm $(WASM_OUT)/v2_fixture.wasm $(WASM_OUT)/poison.wasm target/test-plugins/

language-plugins: test-deps ## Build the example plugins in Python and JavaScript (examples/plugins) to target/language-plugins, pinned toolchains under target/languages
	tests/languages/build.sh

console-deps: test-deps ## Install the web console's test dependencies (axe-core, pinned in host/ui/package-lock.json) into host/ui/node_modules
	cd host/ui && npm ci --no-audit --no-fund

screenshots: plugins console-deps test-servers ## Take the web console's screenshots for the README (docs/console/*.png) with the browser tests
	@set -a; . target/test-servers/env; set +a; \
	DX_UPDATE_SCREENSHOTS=1 $(CARGO) test -p data-exporter --test all -- console::every_view; rc=$$?; \
	tests/servers/down.sh; exit $$rc

run: build ## Build everything and serve on $(LISTEN) with the shipped plugins and default config
	./target/release/data-exporter serve --config deploy/config/data-exporter.toml \
	  --listen $(LISTEN) --plugins target/plugins --data-dir target/data

test-deps: ## Install the Debian packages the tests need, when missing (tests/servers/deps.sh; apt-get as root or with sudo)
	tests/servers/deps.sh

test-servers: test-deps ## Install (if needed) and start the real test servers (OpenSearch API, nginx TLS)
	tests/servers/up.sh

otlp-venv: ## The OpenTelemetry Python SDK and its OTLP exporters (pinned) in target/otlp-venv, for the OTLP tests
	tests/otlp/venv.sh

test-servers-down: ## Stop the test servers
	tests/servers/down.sh

test-unit: ## The tests that need no server, no environment and no wasm build: every crate's unit tests
	$(CARGO) test --workspace --lib

test: test-deps plugins language-plugins console-deps test-servers otlp-venv ## Run every test against real servers (the unit tier first, without the servers' addresses)
	@rc=0; \
	$(CARGO) test --workspace --lib || rc=$$?; \
	set -a; . target/test-servers/env; set +a; \
	$(CARGO) test --workspace --bins --test '*' || rc=$$?; \
	$(CARGO) test --workspace --doc || rc=$$?; \
	$(CARGO) test --manifest-path plugins/Cargo.toml -p opensearch -p file -p stdout -p http -p exporter -p kafka -p data-exporter-sdk -p data-exporter-sdk-macros --lib || rc=$$?; \
	$(CARGO) test --manifest-path plugins/Cargo.toml -p data-exporter-sdk --doc || rc=$$?; \
	tests/k8s/check.sh || rc=$$?; \
	tests/servers/down.sh; exit $$rc

k8s-check: ## Render, validate and lint the Kubernetes manifests (deploy/k8s)
	tests/k8s/check.sh

# Scenarios of `dx-bench` to run, e.g. `make bench BENCH=destination` (BENCHMARKS.md lists them);
# empty: all of them, then the plugin-call benchmark. The environment passes through: e.g.
# FLUENT_BIT=/path/to/fluent-bit adds Fluent Bit's rows to the `peer` scenario (a release build
# made outside this tree; BENCHMARKS.md, Method, "Peer"), DX_BENCH_CONNECTIONS sets the load.
BENCH ?=

bench: plugins ## Benchmarks in release mode, each next to its baseline, as ratios (results: BENCHMARKS.md); BENCH=<scenario> runs only those
	$(CARGO) build --release -p data-exporter -p dx-bench
	tests/servers/up.sh
	@set -a; . target/test-servers/env; set +a; \
	rc=0; ./target/release/dx-bench $(BENCH) || rc=$$?; \
	tests/servers/down.sh; exit $$rc
	@[ -n "$(BENCH)" ] || $(CARGO) bench -p dx-bench --bench plugin_call

FUZZ_SECS ?= 120
FUZZ_TARGETS := envelope framing token otlp_protobuf otlp_json

fuzz: ## Fuzz the ingest boundary (wire/fuzz: envelope, framing, token, OTLP protobuf and JSON), each FUZZ_SECS seconds (120); nightly + cargo-fuzz
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd wire/fuzz && for t in $(FUZZ_TARGETS); do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done

lint: ## rustfmt and clippy (warnings are errors) on host and plugins
	$(CARGO) fmt --all -- --check
	cd plugins && $(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd plugins && $(CARGO) clippy --workspace --target $(WASM_TARGET) -- -D warnings

fmt: ## Format all code
	$(CARGO) fmt --all
	cd plugins && $(CARGO) fmt --all

clean: ## Remove build output
	$(CARGO) clean
	cd plugins && $(CARGO) clean
