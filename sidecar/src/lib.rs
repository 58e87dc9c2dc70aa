//! `trellis-sidecar`: runs beside a workload, holds its identity and enforces two-way TLS.
//!
//! Identity side: `agent` (bootstrap, renewal, backoff, bundle watch) publishes validated
//! [`credentials::Credentials`] on a watch channel; `trust` decides the initial bundle;
//! `join_token` and `k8s_token` (the pod's service-account token) are the bootstrap
//! credentials; `svid_files` writes them out for the app; `retry_hint` reads the CA's
//! RESOURCE_EXHAUSTED hint; `fd_limit` raises the open-file limit at start-up and
//! `fd_budget` shares it between the listeners.
//! Data side: `inbound`, `outbound` and `proxy` move bytes, `policy` decides who may
//! connect, `capture` redirects the pod's inbound connections to the sidecar (and warns
//! where nothing does), `admin` serves health, metrics, identity and the app's probes
//! (`app_probes`); `run` wires everything together.

pub mod admin;
pub mod agent;
pub mod app_probes;
pub mod capture;
pub mod check;
pub mod config;
pub mod credentials;
pub mod fd_budget;
pub mod fd_limit;
pub mod inbound;
pub mod join_token;
pub mod k8s_token;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod probe_ready;
pub mod proxy;
pub mod retry_hint;
pub mod run;
pub mod shutdown;
pub mod svid_files;
pub mod trust;
pub mod workload_api;
