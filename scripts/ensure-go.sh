#!/usr/bin/env bash
# ensure-go.sh: print the PATH under which a Go toolchain (>= the go.mod version, fetched through the
# module proxy by GOTOOLCHAIN=auto when older) and staticcheck are available.
set -euo pipefail
PATH=$PATH:/usr/local/go/bin:$HOME/go/bin
if ! command -v go >/dev/null 2>&1; then
  echo "ensure-go: no Go toolchain found; installing Debian's golang-go (GOTOOLCHAIN=auto then fetches the version go.mod asks for)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq golang-go >/dev/null
fi
gobin=$(go env GOPATH)/bin
PATH=$PATH:$gobin
if ! command -v staticcheck >/dev/null 2>&1; then
  echo "ensure-go: installing staticcheck" >&2
  GOFLAGS= go install honnef.co/go/tools/cmd/staticcheck@v0.8.2 >&2
fi
echo "$PATH"
