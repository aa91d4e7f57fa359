//! isthmus-ctl: the operator's side of Isthmus. `install` renders (and
//! applies) everything a cluster runs; `check` says whether a cluster is
//! ready for it and whether it works; `link` makes the manifests
//! that link two clusters (from their store directories or API servers);
//! the `isthmusctl` binary (`main.rs`) adds `status` (a control plane's
//! links) and `demo` (three local clusters as processes, linked, with
//! traffic and scenarios).
#![forbid(unsafe_code)]

pub mod check;
pub mod dial;
pub mod install;
pub mod link;
