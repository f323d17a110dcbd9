//! The transfer stage: sending the difference to the pod.
//!
//! - [`send`]: the diff sent as patches, pipelined, within the controller's limits.
//! - [`tar`]: a patch's tar of the paths to send.

pub mod send;
pub mod tar;
