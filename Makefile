# orderpipe — see README.md. Every target that needs services starts them (stack/stack.sh).
SHELL := /bin/bash
GO    ?= go
# Integration and end-to-end tests use the real stack; -race always.
TEST_FLAGS ?= -race -count=1 -timeout 30m

.PHONY: all build up down status run test test-short chaos bench lint clean

all: build

build: ## compile the five binaries into bin/
	$(GO) build -o bin/ ./cmd/...

up: ## start Postgres, Redis and Kafka on loopback (installing what is missing)
	stack/stack.sh up

down: ## stop what `make up` started, by pid
	stack/stack.sh down

status:
	@stack/stack.sh status

run: up build ## the stack plus the four daemons in the foreground; Ctrl-C stops them
	stack/run.sh

test: up ## everything CI runs
	$(GO) vet ./...
	$(GO) test $(TEST_FLAGS) ./...
	$(GO) test -run='^$$' -fuzz=FuzzDecodeCreate -fuzztime=10s ./api

chaos: up ## the fault-injection suite at full size, with each scenario's figures (make test runs it shortened)
	CHAOS=full FAULT_DURATION=30s $(GO) test -race -count=1 -timeout 90m -v -run 'Chaos|Outage|Restart|Killed|Stops|Universal' ./relay ./e2e ./keyorder

test-short: ## unit tests only, no services
	$(GO) test -short -race -count=1 ./...

bench: up ## benchmarks: print figures, merge them into bench/results/latest.json, write latest.md and e2e.png
	stack/stack.sh tools
	$(GO) run ./bench/relaybench
	$(GO) run ./bench/apibench
	$(GO) run ./bench/e2ebench $(E2E_FLAGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean: down ## stop the stack and delete its data and the binaries
	rm -rf .stack bin

.PHONY: check-observability
check-observability: ## the Prometheus config, the Grafana dashboard and compose.yml (promtool and docker-compose when installed)
	$(GO) test -count=1 -v -run 'TestGrafanaDashboard|TestPrometheusConfig|TestComposeObservability' ./e2e
