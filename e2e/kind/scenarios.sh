#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The demo's canary and failover scenarios against the kind clusters of
# up.sh, printing what `isthmusctl demo --scenario canary,failover` prints.
# Requests go to each cluster's frontend proxy (kubectl port-forward), as
# the local demo sends them to each frontend sidecar; answers say which
# cluster served them (the sample app's x-sample-cluster header).
#
#   canary:   eu-west's frontend calls reviews (v1 there); an HTTPRoute
#             sends 10, 50, 100 % to reviews-us-east (v2), x-canary:
#             always sends all of it, then the route is deleted;
#   failover: eu-west's frontend calls catalog.shop.svc.clusterset.local;
#             eu-west's catalog is scaled to 0 (eu-central takes over, no
#             request lost), then eu-central's gateway too (no catalog is
#             left), then both come back.
#
#   e2e/kind/scenarios.sh [--dry-run]   # exit status: whether they went as expected
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"


parse_dry_run "$@"
need kubectl curl

WEST_PORT=18081
FAILED=0
PF_PID=""
# shellcheck disable=SC2317 # called by the trap
cleanup() { [ -z "$PF_PID" ] || kill "$PF_PID" 2>/dev/null || true; }
trap cleanup EXIT

say "== eu-west's frontend, port-forwarded to 127.0.0.1:$WEST_PORT"
printf '+ kubectl --context %s -n shop port-forward deploy/frontend %s:15080 &\n' "$(ctx eu-west)" "$WEST_PORT"
if [ "$DRY_RUN" = 0 ]; then
  kubectl --context "$(ctx eu-west)" -n shop port-forward deploy/frontend "$WEST_PORT:15080" >"$WORK/port-forward.log" 2>&1 &
  PF_PID=$!
fi
wait_for "the port-forward" 30 curl -s -o /dev/null "http://127.0.0.1:$WEST_PORT/"

# `traffic HOST N [HEADER]`: N requests; sets SERVED (cluster → count),
# ERRORS and TOTAL.
declare -A SERVED
ERRORS=0
TOTAL=0
traffic() {
  local host="$1" n="$2" header="${3:-x-none: 1}"
  SERVED=()
  ERRORS=0
  TOTAL=0
  printf '+ %s requests to %s (%s)\n' "$n" "$host" "$header"
  [ "$DRY_RUN" = 1 ] && return 0
  local line code cluster
  for _ in $(seq "$n"); do
    line="$(curl -s -o /dev/null --max-time 5 -H "Host: $host" -H "$header" \
      -w '%{http_code} %header{x-sample-cluster}' "http://127.0.0.1:$WEST_PORT/" || true)"
    code="${line%% *}"
    cluster="${line#* }"
    TOTAL=$((TOTAL + 1))
    if [ "$code" = 200 ] && [ -n "$cluster" ]; then
      SERVED[$cluster]=$((${SERVED[$cluster]:-0} + 1))
    else
      ERRORS=$((ERRORS + 1))
    fi
  done
}

served() { printf '%s' "${SERVED[$1]:-0}"; }

expect() {
  local what="$1"
  shift
  if [ "$DRY_RUN" = 1 ] || "$@"; then
    say "     ok: $what"
  else
    say "     FAILED: $what"
    FAILED=1
  fi
}

# Polls (up to SECS) until `traffic HOST 10` is all served by CLUSTER.
until_served_by() {
  local host="$1" cluster="$2" secs="$3" start=$SECONDS
  printf '+ (until %s serves all of %s, %ss)\n' "$cluster" "$host" "$secs"
  [ "$DRY_RUN" = 1 ] && return 0
  while [ $((SECONDS - start)) -lt "$secs" ]; do
    traffic "$host" 10
    [ "$(served "$cluster")" = 10 ] && return 0
  done
  return 1
}

# `recovers HOST CLUSTER SECS SAID`: waits until CLUSTER serves all of
# HOST, then says SAID with how long it took (or fails the run).
recovers() {
  local start=$SECONDS
  if until_served_by "$1" "$2" "$3"; then
    say "  $4 $((SECONDS - start)) s later"
  else
    expect "$2 serves $1 within $3 s" false
  fi
}

apply_canary() {
  run_to "$WORK/reviews-canary.yaml" "$ISTHMUSCTL" sample --cluster eu-west --canary "$1"
  run kubectl --context "$(ctx eu-west)" apply -f "$WORK/reviews-canary.yaml"
}

say "== canary: eu-west's frontend calls reviews (v1 here); an HTTPRoute sends a share to reviews-us-east (v2)"
for weight in 10 50 100; do
  apply_canary "$weight"
  # The route reaches the frontend's proxy within seconds: wait for the
  # share to move before measuring it.
  wait_for "weight $weight in effect" 30 bash -c \
    "for i in 1 2 3 4 5 6 7 8 9 10; do curl -s -o /dev/null -w '%header{x-sample-cluster}\n' -H 'Host: reviews.shop' http://127.0.0.1:$WEST_PORT/ ; done | grep -c us-east | awk '{exit !(\$1 > 0)}'"
  traffic reviews.shop 100
  share=$(($(served us-east) * 100 / (TOTAL > 0 ? TOTAL : 1)))
  say "  weights $((100 - weight))/$weight: eu-west $(served eu-west), us-east $(served us-east) ($share % us-east), $ERRORS errors"
  if [ "$weight" = 100 ]; then
    expect "all on us-east" [ "$share" = 100 ]
  else
    expect "about $weight % on us-east" [ $((share > weight ? share - weight : weight - share)) -le 20 ]
  fi
  expect "no errors" [ "$ERRORS" = 0 ]
  if [ "$weight" = 10 ]; then
    traffic reviews.shop 20 "x-canary: always"
    say "  x-canary: always at 10 %: us-east $(served us-east) of $TOTAL"
    expect "the header sends all to the canary" [ "$(served us-east)" = "$TOTAL" ]
  fi
done
run kubectl --context "$(ctx eu-west)" -n shop delete httproute reviews-canary
recovers reviews.shop eu-west 30 "rolled back: all answers from eu-west"


CATALOG=catalog.shop.svc.clusterset.local
say "== failover: eu-west's frontend calls $CATALOG (eu-west's own first, then eu-central's)"
until_served_by "$CATALOG" eu-west 60 || expect "catalog served by eu-west to begin with" false
run kubectl --context "$(ctx eu-west)" -n shop scale deploy/catalog-v1 --replicas 0
recovers "$CATALOG" eu-central 60 "1. eu-west's catalog scaled to 0: all answers from eu-central"

traffic "$CATALOG" 50
expect "no request lost on eu-central ($ERRORS errors)" [ "$ERRORS" = 0 ]
run kubectl --context "$(ctx eu-central)" -n isthmus-system scale deploy/isthmus-eastwest --replicas 0
run kubectl --context "$(ctx eu-central)" -n isthmus-system wait --for=delete pod -l app=isthmus-eastwest --timeout 60s
traffic "$CATALOG" 10
say "  2. eu-central's gateway scaled to 0 too: no catalog is left ($ERRORS of $TOTAL failed, as they must)"
expect "requests fail while no catalog is left" [ "$ERRORS" = "$TOTAL" ]
run kubectl --context "$(ctx eu-central)" -n isthmus-system scale deploy/isthmus-eastwest --replicas 2
recovers "$CATALOG" eu-central 120 "3. eu-central's gateway back: served from eu-central again"
run kubectl --context "$(ctx eu-west)" -n shop scale deploy/catalog-v1 --replicas 1
recovers "$CATALOG" eu-west 120 "4. eu-west's catalog back: traffic back in eu-west"


if [ "$FAILED" = 0 ]; then say "scenarios: as expected"; else say "scenarios: NOT as expected"; fi
exit "$FAILED"
