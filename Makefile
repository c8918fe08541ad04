# mptcp-pmd: build, test and try the MPTCP path-manager daemon.
GO      ?= go
PREFIX  ?= /usr
DESTDIR ?=
BIN     := bin
PKGS    := ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test test-short lint bench fuzz demo clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# The full suite. As root with MPTCP it builds namespace labs and private
# buses; as another user those tests skip and say why (with CI set they fail).
test: lint
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

# Unit tests only: no root, no kernel, no bus.
test-short:
	$(GO) test -short -count=1 $(PKGS)

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 $(PKGS)

FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeEvent -fuzztime $(FUZZTIME) ./pm

clean:
	rm -rf $(BIN)

# A throw-away namespace lab, a private bus, the daemon, real MPTCP traffic.
demo: build
	bash dist/lab/demo.sh
