//! The transfer stage: sending the difference to the pod.
//!
//! - [`tar`]: the patch's tar of the paths to send.

pub mod tar;
