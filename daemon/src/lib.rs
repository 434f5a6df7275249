//! mtlsd: a host-level mTLS termination daemon.
//!
//! The data path reads top to bottom: [`proxy::inbound`] accepts TLS, verifies
//! the peer's SVID ([`identity`]), authorizes its SPIFFE ID ([`policy`]),
//! connects to the local service and copies bytes ([`proxy::forward`]);
//! [`proxy::outbound`] is the mirror image for local clients. [`runtime`] binds
//! the listeners from a [`config::Config`], reloads and drains them;
//! [`supervisor`] runs it as a process (signals, file watching, renewal, systemd);
//! [`whatif`] asks a config what its policy decides, offline (`mtlsd policy`).

pub mod accept;
pub mod admin;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod config;
pub mod demo;
pub mod files;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod runtime;
pub mod signing;
pub mod supervisor;
pub mod systemd;
pub mod tls;
pub mod watch;
pub mod whatif;
