# rabbitkit — every target does its own set-up: it installs/starts RabbitMQ and Go tooling as needed.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
GOENV = PATH="$$(bash $(CURDIR)/scripts/ensure-go.sh)"
GOTEST_FLAGS ?=

.PHONY: demo test lint unit soak bench fuzz broker node postgres promtool

## demo: the guarantee, live: publisher + consumer through a faulty proxy against a real broker.
demo: broker
	$(GOENV) go run ./examples/demo

## test: vet, staticcheck, gofmt and the whole race-enabled test suite, integration and chaos included.
test: broker node postgres promtool lint
	$(GOENV) go test -race -count=1 -timeout 25m $(GOTEST_FLAGS) ./...
	cd interop/watermill && $(GOENV) go test -race -count=1 -timeout 5m $(GOTEST_FLAGS) ./...

## unit: the tests that need no broker, database or network (go test -short): seconds, not minutes.
unit:
	$(GOENV) go test -short -race -count=1 -run '^(Test|Fuzz)' ./... # examples talk to a broker

## lint: gofmt, go vet, staticcheck, and no non-test Go file over 400 lines.
lint:
	@$(GOENV); unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "not gofmt-clean:"; echo "$$unformatted"; exit 1; fi
	@long=$$(for f in $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'); do \
	  case $$f in *_test.go) continue;; esac; n=$$(wc -l < $$f); [ $$n -le 400 ] || echo "$$f: $$n lines"; done); \
	  if [ -n "$$long" ]; then echo "non-test Go files over 400 lines (split them by job):"; echo "$$long"; exit 1; fi
	$(GOENV) go vet ./...
	$(GOENV) staticcheck ./...
	cd interop/watermill && $(GOENV) go vet ./... && $(GOENV) staticcheck ./...

## broker: make sure the shared RabbitMQ answers on 127.0.0.1:5672 (install/start it if needed).
broker:
	@bash scripts/ensure-rabbitmq.sh

## postgres: make sure PostgreSQL answers on 127.0.0.1:5432 with trust auth for postgres (consumer/pginbox's tests).
postgres:
	@bash scripts/ensure-postgres.sh

## promtool: Prometheus's promtool (Debian's prometheus package, no server left running), for deploy/'s rule and dashboard tests.
promtool:
	@bash scripts/ensure-promtool.sh

## node: Node.js, npm and the interop publisher's npm package (integration/interop/node), for TestNodeInterop.
node:
	@bash scripts/ensure-node.sh

## soak: long fault-injection runs (one million messages, hundreds of faults); writes docs/RELIABILITY.md.
soak: broker postgres
	$(GOENV) go test -race=false -count=1 -timeout 4h -tags soak -run Soak -v ./integration/ ./journal/ ./publisher/ ./consumer/...

## bench: benchmarks, our path beside the raw amqp091-go / bbolt baseline in the same run.
bench: broker postgres
	$(GOENV) go test -run '^$$' -bench . -benchmem -count 1 -timeout 60m ./journal/ ./publisher/ ./consumer/...

## fuzz: run every fuzz target for FUZZTIME each (default 30s).
FUZZTIME ?= 30s
fuzz:
	@$(GOENV); for pkg in $$(go list ./...); do \
	  for f in $$(go test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; done; done
