//! What kdev does in and with the dev pod: upload the controller, the session stream to it,
//! port-forwards, and Delve for `kdev debug`.

pub mod bootstrap;
pub mod controllers;
pub mod delve;
mod exec_stream;
pub mod forward;
pub mod session;
pub mod session_state;
