# Tether: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
# Where cargo puts binaries (honours CARGO_TARGET_DIR, as cargo does).
TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)

.PHONY: build test lint demo bench clean

## build: release binaries (tether-ca, tether-proxy, demo services) in target/release
build:
	$(CARGO) build --release --workspace --bins

## test: the whole test suite (unit, integration, end to end with real sockets; each binary the
## end-to-end tests run is built for its own package's integration tests), then deploy/check.sh:
## the alert rules with promtool and the Kubernetes manifests (SKIPPED without the tools)
test:
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	bash deploy/check.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## demo: the whole mesh on one machine, narrated and checked (KEEP=1 keeps its temp dir)
demo: build
	$(TARGET_DIR)/release/tether-demo

## bench: Tether (the release build, what `make build` gives users) against nginx and haproxy pairs,
## interleaved rounds; report in target/bench/report.md (env: ROUNDS=3 DURATION=10, SMOKE=1 for a
## 1-round 2 s check, WORKLOADS to pick some; see proxy/bench/run.sh). Micro-benchmarks:
## cargo bench -p tether-certs / tether-proxy / tether-ca
bench:
	bash proxy/bench/run.sh

clean:
	$(CARGO) clean
