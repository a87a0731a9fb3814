//! vxcd: turns service keys and virtual cross connects into kernel state.
pub mod dataplane;
