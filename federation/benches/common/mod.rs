//! The large synthetic cluster the control-plane benchmarks share:
//! services in 100 namespaces, each with an EndpointSlice of
//! `endpoints` endpoints over three zones; every tenth service has an
//! HTTPRoute (canary header + 90/10 split) and a DestinationPolicy.

pub fn mesh(services: usize, endpoints: usize) -> String {
    let mut docs = Vec::with_capacity(services * 2);
    for i in 0..services {
        let (ns, name) = (format!("ns{}", i % 100), format!("svc{i}"));
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{clusterIP: 10.96.{}.{}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n",
            i / 250,
            i % 250
        ));
        if endpoints > 0 {
            let mut slice = format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}-a, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
            );
            for e in 0..endpoints {
                let g = i * endpoints + e;
                slice.push_str(&format!(
                    "  - {{addresses: [10.{}.{}.{}], zone: z{}}}\n",
                    g / 65536 % 256,
                    g / 256 % 256,
                    g % 256,
                    e % 3
                ));
            }
            docs.push(slice);
        }
        if i % 10 == 0 {
            docs.push(format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec:\n  parentRefs: [{{kind: Service, group: \"\", name: {name}}}]\n  rules:\n\
                 \x20   - matches: [{{headers: [{{name: x-canary, value: \"1\"}}]}}]\n      backendRefs: [{{name: svc{}}}]\n\
                 \x20   - backendRefs: [{{name: {name}, weight: 90}}, {{name: svc{}, weight: 10}}]\n",
                (i + 100) % services,
                (i + 100) % services
            ));
            docs.push(format!(
                "apiVersion: isthmus.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec: {{targetRef: {{name: {name}}}, timeout: 2s, retry: {{attempts: 2, retryOn: [5xx]}}}}\n"
            ));
        }
    }
    docs.join("---\n")
}
