# Warbler: `make run` starts the server with embedded defaults; `make test`
# runs every check and test. Both work on a fresh checkout.

GO        ?= go
BIN       := bin/warbler
FUZZTIME  ?= 30s
BENCHTIME ?= 1s
ARGS      ?=

.PHONY: build run test lint bench fuzz soak clean web e2e

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/warbler

## run: build and start the server (data in ./data, MQTT :1883, WS :8083, HTTP :8080)
run: build
	exec $(abspath $(BIN)) serve $(ARGS)

## lint: formatting and static checks
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## test: lint, then every test with the race detector, then each fuzz target
## briefly, then the web client's end-to-end tests in headless Chromium
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) fuzz FUZZTIME=5s
	$(MAKE) e2e

## bench: Go benchmarks of every package
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

## fuzz: run every fuzz target for FUZZTIME each. A target fails only on a
## failing input (which Go writes to testdata/fuzz); the engine's own
## "context deadline exceeded" when time runs out mid-minimization is not one.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	    if ! $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/warbler-fuzz.log 2>&1; then \
	      if grep -q 'Failing input written' /tmp/warbler-fuzz.log || ! grep -q 'context deadline exceeded' /tmp/warbler-fuzz.log; then \
	        cat /tmp/warbler-fuzz.log; exit 1; \
	      fi; \
	      echo "  (the fuzzing engine ran out of time while minimizing a new input; no failing input found)"; \
	    fi; \
	  done; \
	done

## soak: the long fault runs: SOAK (default 30m) of steady chat load against
## the built server with RSS, heap and goroutines sampled every 10 s (fails
## if they grow after warm-up). It stops by itself.
SOAK ?= 30m
soak:
	WARBLER_SOAK=$(SOAK) $(GO) test -count=1 -timeout 0 -v -run '^TestSoak$$' ./test/fault

## web: rebuild the web client embedded in the binary (web/dist) from its
## sources; needs Node.js 20+ and npm. Commit web/dist with the sources.
web:
	cd web && PUPPETEER_SKIP_DOWNLOAD=1 npm ci && npm run build

## e2e: the web client's end-to-end tests: the built server on a loopback
## port and headless Chromium (/usr/bin/chromium, Debian's package) driven by
## playwright-core, and headless Firefox ESR (/usr/bin/firefox-esr, Debian's
## package) driven by puppeteer-core over WebDriver BiDi. No browser is
## downloaded. Screenshots of each step go to web/test-results/.
e2e: build
	cd web && PUPPETEER_SKIP_DOWNLOAD=1 npm ci && WARBLER_BIN=$(abspath $(BIN)) npm run e2e

clean:
	rm -rf bin
