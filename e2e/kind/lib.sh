# shellcheck shell=bash
# The variables here are the scripts' that source this file:
# shellcheck disable=SC2034
# Shared by up.sh, scenarios.sh and down.sh: the three clusters of the
# walkthrough, the images, and `run` (prints each command; with --dry-run
# only prints it).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTERS=(eu-west eu-central us-east)
# Distinct pod and service ranges: the clusters share one docker network
# (kind's), and their addresses must not overlap.
declare -A POD_CIDR=([eu-west]=10.10.0.0/16 [eu-central]=10.20.0.0/16 [us-east]=10.30.0.0/16)
declare -A SVC_CIDR=([eu-west]=10.110.0.0/16 [eu-central]=10.120.0.0/16 [us-east]=10.130.0.0/16)
REGISTRY="${REGISTRY:-ghcr.io/isthmus-mesh}"
TAG="${TAG:-dev}"
# Native sidecars need Kubernetes 1.29 or later.
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
# LoadBalancer addresses on the kind network, UDP included (QUIC).
CLOUD_PROVIDER_KIND_IMAGE="${CLOUD_PROVIDER_KIND_IMAGE:-registry.k8s.io/cloud-provider-kind/cloud-controller-manager:v0.11.1}"
CLOUD_PROVIDER_KIND_NAME=isthmus-cloud-provider-kind
ISTHMUSCTL="${ISTHMUSCTL:-$ROOT/target/release/isthmusctl}"
WORK="${WORK:-${TMPDIR:-/tmp}/isthmus-kind}"
DRY_RUN=0

# Images per Dockerfile target: isthmus-<target>.
IMAGES=(gateway federation sample)

say() { printf '%s\n' "$*" >&2; }

# --help: the script's opening comment.
usage() {
  awk 'NR > 1 && /^# shellcheck/ {next} NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"
  exit 0
}
die() {
  say "error: $*"
  exit 1
}

# `--dry-run` in the arguments: print commands instead of running them.
parse_dry_run() {
  for a in "$@"; do
    case "$a" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage ;;
    *) die "unknown argument $a (try --help)" ;;
    esac
  done
  mkdir -p "$WORK"
}

# Prints the command, then runs it (not in a dry run).
run() {
  printf '+ %s\n' "$*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# `run_to FILE cmd...`: the command's output into FILE.
run_to() {
  local out="$1"
  shift
  printf '+ %s > %s\n' "$*" "$out"
  if [ "$DRY_RUN" = 0 ]; then "$@" >"$out"; fi
}

need() {
  [ "$DRY_RUN" = 1 ] && return 0
  local missing=()
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] || die "needs ${missing[*]} on PATH (see README: Link three kind clusters)"
}

ctx() { printf 'kind-%s' "$1"; }

# Polls `cmd...` until it succeeds, for up to SECS seconds.
wait_for() {
  local what="$1" secs="$2"
  shift 2
  printf '+ (until %s, %ss) %s\n' "$what" "$secs" "$*"
  [ "$DRY_RUN" = 1 ] && return 0
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what"
    sleep 2
  done
}
