//! Kubernetes end-to-end tests, with no cluster: the manifests in deploy/ rendered by real
//! kustomize (`kubectl kustomize`) and checked by a real schema validator
//! (`kubernetes-validate`, installed by scripts/install-test-deps.sh); every setting they
//! hand to a Trellis binary run through that binary's `--check-config`; `trellis inject`
//! run on real-world manifests; the injection webhook served over real HTTPS and sent
//! AdmissionReview requests with curl.

#[path = "kubernetes/attestation.rs"]
mod attestation;
#[path = "kubernetes/ha.rs"]
mod ha;
#[path = "kubernetes/import.rs"]
mod import;
#[path = "kubernetes/inject.rs"]
mod inject;
#[path = "kubernetes/manifests.rs"]
mod manifests;
#[path = "kubernetes/tools.rs"]
mod tools;
#[path = "kubernetes/webhook.rs"]
mod webhook;
