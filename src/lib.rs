//! vxcd: turns service keys and virtual cross connects into kernel state.

pub mod client;
pub mod config;
pub mod domain;
pub mod logging;
pub mod protocol;
