//! The proxy's side of the mesh transport (the HBONE idea): the 15008
//! listener. TLS with client certificates verified against the peer's
//! trust domain, then each CONNECT stream (authority `ip:port`) is served
//! as an inbound connection carrying the peer's SPIFFE ID, so
//! authorization and metrics see it. The client side, shared with the
//! control plane, is `isthmus_mesh::transport`.

pub mod server;
