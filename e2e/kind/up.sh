#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Three kind clusters (eu-west, eu-central, us-east) linked into one mesh:
# clusters with distinct pod and service ranges on kind's docker network,
# LoadBalancer addresses from cloud-provider-kind (TCP and UDP), the
# images built and loaded, Isthmus installed in each (isthmusctl install),
# every cluster linked with every other (isthmusctl link create, the
# gateway address read from each LoadBalancer), and the sample mesh of
# SCENARIOS.md deployed with injection. Then run scenarios.sh.
#
#   e2e/kind/up.sh             # needs docker, kind, kubectl, cargo
#   e2e/kind/up.sh --dry-run   # prints every command, runs none
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"


parse_dry_run "$@"
need docker kind kubectl cargo

say "== isthmusctl (it installs, links and renders the sample)"
run cargo build --release --locked -p isthmus-ctl --manifest-path "$ROOT/Cargo.toml"

say "== clusters"
for c in "${CLUSTERS[@]}"; do
  config="$WORK/kind-$c.yaml"
  cat >"$config" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
name: $c
networking:
  podSubnet: ${POD_CIDR[$c]}
  serviceSubnet: ${SVC_CIDR[$c]}
nodes:
  - role: control-plane
    labels:
      topology.kubernetes.io/region: $c
      topology.kubernetes.io/zone: $c-a
YAML
  if [ "$DRY_RUN" = 0 ] && kind get clusters 2>/dev/null | grep -qx "$c"; then
    say "cluster $c exists"
  else
    run kind create cluster --name "$c" --config "$config" --image "$KIND_NODE_IMAGE" --wait 120s
  fi
done

say "== LoadBalancer addresses (cloud-provider-kind, on the kind network)"
if [ "$DRY_RUN" = 0 ] && docker inspect "$CLOUD_PROVIDER_KIND_NAME" >/dev/null 2>&1; then
  say "$CLOUD_PROVIDER_KIND_NAME runs"
else
  run docker run -d --name "$CLOUD_PROVIDER_KIND_NAME" --restart unless-stopped --network kind \
    -v /var/run/docker.sock:/var/run/docker.sock "$CLOUD_PROVIDER_KIND_IMAGE"
fi

say "== images"
for t in "${IMAGES[@]}"; do
  run docker build --target "$t" -t "$REGISTRY/isthmus-$t:$TAG" "$ROOT"
  for c in "${CLUSTERS[@]}"; do
    run kind load docker-image "$REGISTRY/isthmus-$t:$TAG" --name "$c"
  done
done

say "== install"
for c in "${CLUSTERS[@]}"; do
  run "$ISTHMUSCTL" check --pre --context "$(ctx "$c")"
done
for c in "${CLUSTERS[@]}"; do
  run "$ISTHMUSCTL" install --cluster "$c" --registry "$REGISTRY" --tag "$TAG" --context "$(ctx "$c")"
done
for c in "${CLUSTERS[@]}"; do
  run kubectl --context "$(ctx "$c")" -n isthmus-system rollout status \
    deploy/isthmus-federation deploy/isthmus-eastwest --timeout 300s
  wait_for "$c's gateway load balancer" 180 \
    kubectl --context "$(ctx "$c")" -n isthmus-system get svc isthmus-eastwest \
    -o 'jsonpath={.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}' --allow-missing-template-keys=false
done

say "== links (each cluster with each other; gateways from their load balancers)"
for a in "${CLUSTERS[@]}"; do
  for b in "${CLUSTERS[@]}"; do
    [ "$a" = "$b" ] && continue
    run_to "$WORK/link-$a-to-$b.yaml" "$ISTHMUSCTL" link create --from-context "$(ctx "$a")" --to-context "$(ctx "$b")"
    run kubectl --context "$(ctx "$a")" apply -f "$WORK/link-$a-to-$b.yaml"
  done
done

say "== the sample mesh (namespace shop, injected)"
for c in "${CLUSTERS[@]}"; do
  run_to "$WORK/sample-$c.yaml" "$ISTHMUSCTL" sample --cluster "$c" --registry "$REGISTRY" --tag "$TAG"
  run kubectl --context "$(ctx "$c")" apply -f "$WORK/sample-$c.yaml"
done
for c in "${CLUSTERS[@]}"; do
  run kubectl --context "$(ctx "$c")" -n shop wait --for=condition=Available deploy --all --timeout 300s
done

say "== links connected"
for c in "${CLUSTERS[@]}"; do
  wait_for "$c's links connected" 120 bash -c \
    "\"$ISTHMUSCTL\" link list --context $(ctx "$c") --json | grep -q '\"connected\": true' && ! \"$ISTHMUSCTL\" link list --context $(ctx "$c") --json | grep -q '\"connected\": false'"
  run "$ISTHMUSCTL" link list --context "$(ctx "$c")"
done

say "== check (all three together: clocks compared)"
run "$ISTHMUSCTL" check --context "$(ctx eu-west)" --context "$(ctx eu-central)" --context "$(ctx us-east)"

say "linked: now run e2e/kind/scenarios.sh (and e2e/kind/down.sh to remove it all)"
