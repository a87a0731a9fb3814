//! vxcd: turns service keys and virtual cross connects into kernel state.
//!
//! Layers, from the inside out: `domain` (pure rules), `protocol` (wire shapes), `store`
//! (durable state), `dataplane` (netlink: desired -> plan -> apply -> verify), `engine` (the one
//! owner of model, store and dataplane), `reconcile` (drift repair), `server` (control socket),
//! `config`, `logging`; the binaries `vxcd` and `vxcctl` are thin.

pub mod cli;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod domain;
pub mod engine;
pub mod inspector;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod reconcile;
pub mod server;
pub mod store;

#[cfg(test)]
mod proptests;
