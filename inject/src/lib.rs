//! Sidecar injection for Kubernetes, without any I/O: the planner that both `trellis inject
//! -f` (offline, on manifests) and the `trellis-injector` admission webhook run, so a pod
//! gets the same patch either way.
//!
//! - [`pod`]: decides whether a pod is injected and builds its JSON Patch (native sidecar,
//!   volumes, annotations); [`capture`]: the `trellis-init` container and the probe rewrite;
//! - [`patch`]: RFC 6902 `add` operations and applying them;
//! - [`manifest`]: YAML/JSON streams of workloads in, injected documents out ([`yaml`]
//!   writes YAML that Kubernetes reads unambiguously);
//! - [`webhook`]: an `AdmissionReview` v1 request in, its response out;
//! - [`flags`]: the sidecar flags both programs take, validated into [`pod::Settings`].

pub mod capture;
pub mod flags;
pub mod manifest;
pub mod patch;
pub mod pod;
pub mod webhook;
pub mod yaml;

pub use flags::SidecarFlags;
pub use pod::{Settings, Unannotated};
