#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Removes what up.sh made: the three kind clusters and cloud-provider-kind.
#
#   e2e/kind/down.sh [--dry-run]
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"


parse_dry_run "$@"
need docker kind
for c in "${CLUSTERS[@]}"; do
  run kind delete cluster --name "$c"
done
run docker rm -f "$CLOUD_PROVIDER_KIND_NAME"
