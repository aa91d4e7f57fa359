#!/usr/bin/env bash
# Builds Istio's ztunnel once, as the mesh benchmark's baseline (issue 24):
# a benchmark baseline, not a dependency. The binary goes to
# target/ztunnel/ztunnel; the benchmark skips ztunnel, saying so, when it
# is absent. About 13 minutes on 2 cores (ztunnel's release profile: fat
# LTO, one codegen unit).
#
#   gateway/benches/ztunnel/build.sh                  # clones the pinned commit
#   ZTUNNEL_SRC=/path/to/ztunnel gateway/benches/ztunnel/build.sh
#
# ztunnel's TLS defaults to aws-lc (as ours); its FIPS provider is a git-only
# dependency, dropped here (not built with tls-aws-lc anyway). jemalloc is
# kept: it is what ztunnel ships with; `testing` is what lets it run
# standalone with its fake CA (FAKE_CA=true). Needs protoc
# (protobuf-compiler).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
OUT="$ROOT/target/ztunnel"
REPO="${ZTUNNEL_REPO:-https://github.com/istio/ztunnel}"
COMMIT="${ZTUNNEL_COMMIT:-62d826530e5ce85764e309170205b293efcbc80b}"
SRC="$OUT/src"

if [[ -x "$OUT/ztunnel" && -z "${ZTUNNEL_REBUILD:-}" ]]; then
    echo "ztunnel already built: $OUT/ztunnel (ZTUNNEL_REBUILD=1 to build again)"
    exit 0
fi
if ! command -v protoc >/dev/null; then
    echo "ztunnel's build needs protoc: apt-get install -y protobuf-compiler" >&2
    exit 1
fi
mkdir -p "$OUT"
rm -rf "$SRC"
# Without vendor/boringssl-fips: FIPS BoringSSL binaries, only for
# tls-boring (and large; mirrors may leave them out).
git clone --quiet --no-checkout "${ZTUNNEL_SRC:-$REPO}" "$SRC"
git -C "$SRC" sparse-checkout set --no-cone '/*' '!/vendor/boringssl-fips/'
git -C "$SRC" checkout --quiet "$COMMIT" 2>/dev/null
git -C "$SRC" rev-parse --verify --quiet HEAD >/dev/null
test -f "$SRC/Cargo.toml"

# The git-only FIPS provider: its dependency line and the feature naming it.
sed -i -e '/^boring-rustls-provider = /d' \
       -e 's/, "boring-rustls-provider\/fips-only"//' "$SRC/Cargo.toml"
if grep -q boring-rustls-provider "$SRC/Cargo.toml"; then
    echo "ztunnel's Cargo.toml still names boring-rustls-provider: update this script" >&2
    exit 1
fi

# Its own workspace, not ours (it sits under our target/).
grep -q '^\[workspace\]' "$SRC/Cargo.toml" || printf '\n[workspace]\n' >> "$SRC/Cargo.toml"

(cd "$SRC" && CARGO_TARGET_DIR="$OUT/build" cargo build --release \
    --no-default-features --features tls-aws-lc,jemalloc,testing --bin ztunnel)
cp "$OUT/build/release/ztunnel" "$OUT/ztunnel"
rm -rf "$OUT/build/release/deps" "$OUT/build/release/build" "$OUT/build/release/incremental"
echo "built $OUT/ztunnel ($(git -C "$SRC" rev-parse --short HEAD))"
