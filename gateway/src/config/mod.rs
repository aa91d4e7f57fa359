//! Configuration: compiling the api model into the form the request path
//! reads (`compile`), the store that holds the snapshot in effect
//! (`store`), and the YAML file source that feeds it (`file`).

pub mod compile;
pub mod file;
pub mod snapshot;
pub mod store;

pub use compile::{CompileError, compile};
pub use snapshot::{
    EndpointKey, EndpointSpec, HashKeySpec, LbSpec, ListenerKind, ListenerSpec, NodeInfo,
    PoolLimits, PortSpec, Protocol, ServiceSpec, Snapshot,
};
pub use store::Store;
