//! Property tests of every parser that reads what vxcd does not control: request lines, the
//! state files, captured frames and the config. Random and mutated inputs never panic and give
//! only the documented outcomes; valid inputs round-trip. (Coverage-guided fuzz targets of the
//! same parsers are in `fuzz/`.)

mod config;
mod frame;
mod request;
mod store;
