#!/usr/bin/env bash
# ensure-go.sh: print the PATH under which a Go toolchain (>= the go.mod version, fetched through the
# module proxy by GOTOOLCHAIN=auto when older), a C compiler (go test -race needs cgo) and staticcheck
# are available.
set -euo pipefail
PATH=$PATH:/usr/local/go/bin:$HOME/go/bin
# What a minimal Debian (debootstrap minbase, container images) lacks: without a CA bundle every
# download from the HTTPS module proxy fails ("x509: certificate signed by unknown authority"); without
# gcc, Go turns cgo off and `go test -race` fails ("-race requires cgo").
missing=()
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
cc=${CC:-gcc}
command -v "${cc%% *}" >/dev/null 2>&1 || missing+=(gcc libc6-dev)
if ! command -v go >/dev/null 2>&1; then
  echo "ensure-go: no Go toolchain found; installing Debian's golang-go (GOTOOLCHAIN=auto then fetches the version go.mod asks for)" >&2
  missing+=(golang-go)
fi
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" != 0 ]; then
  echo "ensure-go: missing ${missing[*]}; run as root to have them installed with apt-get" >&2
elif [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-go: installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian bookworm's golang-go is Go 1.19, which predates GOTOOLCHAIN (Go 1.21) and cannot build this
# module: fetch the toolchain go.mod asks for from the module proxy, as a newer go would.
if [[ $(go env GOVERSION) =~ ^go1\.([0-9]+)(\.|$) ]] && [ "${BASH_REMATCH[1]}" -lt 21 ]; then
  want=$(awk '$1 == "go" { v = $2 } $1 == "toolchain" { t = $2 } END { if (t) print t; else print "go" v }' "$(dirname "$0")/../go.mod")
  [[ $want =~ ^go1\.[0-9]+\.[0-9]+$ ]] || want=$want.0 # "go 1.26" is first released as go1.26.0
  echo "ensure-go: $(go env GOVERSION) predates GOTOOLCHAIN; fetching $want from the module proxy" >&2
  dir=$(cd / && GO111MODULE=on GOFLAGS= go mod download -json "golang.org/toolchain@v0.0.1-$want.$(go env GOOS)-$(go env GOARCH)" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] && [ -f "$dir/bin/go" ] || { echo "ensure-go: could not fetch $want" >&2; exit 1; }
  chmod a+x "$dir"/bin/* "$dir"/pkg/tool/*/* # the module cache keeps no execute bits
  PATH=$dir/bin:$PATH
fi
gobin=$(go env GOPATH)/bin
PATH=$PATH:$gobin
if ! command -v staticcheck >/dev/null 2>&1; then
  echo "ensure-go: installing staticcheck" >&2
  GOFLAGS= go install honnef.co/go/tools/cmd/staticcheck@v0.8.2 >&2
fi
echo "$PATH"
