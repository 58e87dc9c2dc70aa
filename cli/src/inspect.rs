//! `trellis inspect FILE.pem`: what a certificate or chain says, offline, and whether it
//! verifies against a trust bundle (from --bundle, or the context's bundle).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use trellis_identity::bundle::Usage;
use trellis_identity::{CertInfo, TrustBundle, TrustDomain, hex, pem};

use crate::Global;
use crate::context;
use crate::error::usage;
use crate::output::{self, Cell, Fields, Report, Style, Tone, expiry_cell};
use crate::timefmt;

/// Leaves expiring sooner than this are shown as a warning.
const SOON: Duration = Duration::from_secs(10 * 60);

/// Arguments of `trellis inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A PEM file with one or more certificates (leaf first for a chain).
    file: PathBuf,
}

#[derive(Debug, Serialize)]
struct CertView {
    subject: String,
    issuer: String,
    spiffe_id: Option<String>,
    uris: Vec<String>,
    dns_names: Vec<String>,
    serial: String,
    not_before: String,
    not_after: String,
    expired: bool,
    /// Seconds until expiry; negative once expired.
    seconds_left: i64,
    key_type: String,
    is_ca: bool,
    spki_sha256: String,
    #[serde(skip)]
    not_before_time: SystemTime,
    #[serde(skip)]
    not_after_time: SystemTime,
}

/// The outcome of checking the chain against a bundle.
#[derive(Debug, Serialize)]
struct Verification {
    /// "verifies", "fails" or "not checked".
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle: Option<PathBuf>,
    /// The root the chain ends at, when it verifies.
    #[serde(skip_serializing_if = "Option::is_none")]
    root_id: Option<String>,
    detail: String,
}

#[derive(Debug, Serialize)]
struct InspectReport {
    file: PathBuf,
    certificates: Vec<CertView>,
    verification: Verification,
    #[serde(skip)]
    now: SystemTime,
}

fn view(der: &[u8], now: SystemTime) -> anyhow::Result<CertView> {
    let info = CertInfo::parse(der)?;
    let fingerprint = trellis_identity::bundle::spki_sha256(der)?;
    Ok(CertView {
        subject: info.subject.clone(),
        issuer: info.issuer.clone(),
        spiffe_id: info.spiffe_id().ok().map(|id| id.to_string()),
        uris: info.uris,
        dns_names: info.dns_names,
        serial: info.serial,
        not_before: timefmt::rfc3339(info.not_before),
        not_after: timefmt::rfc3339(info.not_after),
        expired: timefmt::is_expired(info.not_after, now),
        seconds_left: timefmt::unix_seconds(info.not_after) - timefmt::unix_seconds(now),
        key_type: info.key_algorithm,
        is_ca: info.is_ca,
        spki_sha256: hex::encode(&fingerprint),
        not_before_time: info.not_before,
        not_after_time: info.not_after,
    })
}

/// Checks `chain` against the bundle at `path`. A leaf that is a CA certificate "verifies"
/// only if it is itself one of the bundle's roots.
fn verify(
    chain: &[CertificateDer<'static>],
    leaf: &CertView,
    bundle_path: &Path,
    trust_domain: Option<&str>,
    now: SystemTime,
) -> anyhow::Result<Verification> {
    let bytes = std::fs::read(bundle_path)
        .map_err(|e| usage(format!("cannot read bundle {}: {e}", bundle_path.display())))?;
    // The bundle file names no trust domain: take the configured one, else the leaf's, so
    // that the check is about the chain and not the domain name.
    let td_text = trust_domain
        .map(str::to_owned)
        .or_else(|| {
            leaf.spiffe_id
                .as_deref()
                .and_then(|id| trellis_identity::SpiffeId::new(id).ok())
                .map(|id| id.trust_domain_name().to_owned())
        })
        .unwrap_or_else(|| "cluster.local".into());
    let td = TrustDomain::new(&td_text).map_err(|e| usage(format!("trust domain: {e}")))?;
    let bundle = TrustBundle::from_pem(td, 0, &bytes)
        .map_err(|e| usage(format!("bundle {}: {e}", bundle_path.display())))?;
    let outcome = |result, root_id, detail: String| Verification {
        result,
        bundle: Some(bundle_path.to_owned()),
        root_id,
        detail,
    };
    if leaf.is_ca {
        let id = trellis_identity::bundle::root_id(&chain[0])?;
        return Ok(if bundle.root_ids().contains(&id) {
            outcome(
                "verifies",
                Some(id.clone()),
                format!("is root {id} of the bundle"),
            )
        } else {
            outcome(
                "not checked",
                None,
                "a CA certificate that is not one of the bundle's roots; only leaf chains are verified".into(),
            )
        });
    }
    // An X.509-SVID carries both usages; accept either so that single-purpose
    // certificates are judged on their chain.
    let result = bundle
        .verify(chain, now, Usage::Client)
        .or_else(|_| bundle.verify(chain, now, Usage::Server));
    Ok(match result {
        Ok(v) => outcome(
            "verifies",
            Some(v.root_id.clone()),
            format!("chains to root {} as {}", v.root_id, v.spiffe_id),
        ),
        Err(e) => outcome("fails", None, e.to_string()),
    })
}

impl Report for InspectReport {
    fn human(&self, style: Style) -> String {
        let mut out = String::new();
        let count = self.certificates.len();
        for (i, c) in self.certificates.iter().enumerate() {
            let role = match (i, c.is_ca) {
                (0, false) => "leaf",
                (_, true) if c.subject == c.issuer => "root",
                (_, true) => "CA",
                _ => "certificate",
            };
            out.push_str(&format!(
                "{}\n",
                style.paint(
                    Tone::Strong,
                    &format!("Certificate {} of {count} ({role})", i + 1)
                )
            ));
            let mut fields = Fields::indented(2);
            fields
                .add("Subject", c.subject.clone())
                .add("Issuer", c.issuer.clone());
            match &c.spiffe_id {
                Some(id) => fields.add("SPIFFE ID", id.clone()),
                None if !c.uris.is_empty() => fields.add("URIs", c.uris.join(", ")),
                None => fields.add("SPIFFE ID", Cell::toned("none", Tone::Dim)),
            };
            if !c.dns_names.is_empty() {
                fields.add("DNS names", c.dns_names.join(", "));
            }
            fields
                .add("Serial", c.serial.clone())
                .add(
                    "Not before",
                    format!(
                        "{} ({})",
                        c.not_before,
                        timefmt::since(c.not_before_time, self.now)
                    ),
                )
                .add(
                    "Not after",
                    expiry_cell(
                        format!(
                            "{} ({})",
                            c.not_after,
                            timefmt::expiry(c.not_after_time, self.now)
                        ),
                        c.not_after_time,
                        self.now,
                        SOON,
                    ),
                )
                .add("Key", c.key_type.clone())
                .add("CA", if c.is_ca { "yes" } else { "no" })
                .add("SPKI SHA-256", c.spki_sha256.clone());
            out.push_str(&fields.render(style));
        }
        let v = &self.verification;
        let line = match (v.result, &v.bundle) {
            ("verifies", Some(b)) => style.paint(
                Tone::Good,
                &format!("verifies against {} ({})", b.display(), v.detail),
            ),
            ("fails", Some(b)) => style.paint(
                Tone::Bad,
                &format!("does NOT verify against {}: {}", b.display(), v.detail),
            ),
            _ => format!("not checked ({})", v.detail),
        };
        out.push_str(&format!(
            "{}  {line}\n",
            style.paint(Tone::Strong, "Verification")
        ));
        out
    }
}

/// Runs `trellis inspect`.
pub fn run(args: InspectArgs, global: &Global) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| usage(format!("cannot read {}: {e}", args.file.display())))?;
    let chain =
        pem::certs_from_pem(&bytes).map_err(|e| usage(format!("{}: {e}", args.file.display())))?;
    let now = SystemTime::now();
    let certificates = chain
        .iter()
        .map(|der| view(der, now))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    // Only the bundle and trust domain matter here, and a missing context is fine.
    let settings = context::resolve(&global.connection)?;
    let verification = match &settings.bundle {
        Some(bundle) => verify(
            &chain,
            &certificates[0],
            bundle,
            settings.trust_domain.as_deref(),
            now,
        )?,
        None => Verification {
            result: "not checked",
            bundle: None,
            root_id: None,
            detail: "no bundle: pass --bundle FILE or run `trellis login`".into(),
        },
    };
    let report = InspectReport {
        file: args.file,
        certificates,
        verification,
        now,
    };
    output::emit(global.output, &report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_identity::WorkloadKey;
    use trellis_identity::profile::{LeafSpec, SigningCa, new_intermediate, new_root};

    /// A root, and a chain (leaf + intermediate) for `id` under it.
    fn chain_for(
        td: &str,
        id_path: &str,
    ) -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
        let td = TrustDomain::new(td).expect("td");
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let root = new_root(&td, now, 3650 * day).expect("root");
        let root = SigningCa::new(root.cert, root.key).expect("root signer");
        let inter = new_intermediate(&td, &root, now, 365 * day).expect("intermediate");
        let inter = SigningCa::new(inter.cert, inter.key).expect("signer");
        let key = WorkloadKey::generate().expect("key");
        let leaf = inter
            .sign_leaf(
                &LeafSpec {
                    spiffe_id: td.id(id_path).expect("id"),
                    dns_names: vec!["web.local".into()],
                    public_point: key.key_pair().public_key_raw().to_vec(),
                    lifetime: Duration::from_secs(3600),
                },
                now,
            )
            .expect("leaf");
        (root.cert.clone(), vec![leaf.der, inter.cert.clone()])
    }

    #[test]
    fn shows_fields_and_verifies_against_the_right_bundle_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (root, chain) = chain_for("example.org", "/web");
        let (other_root, _) = chain_for("example.org", "/other");
        let good = dir.path().join("good.pem");
        let bad = dir.path().join("bad.pem");
        std::fs::write(&good, pem::certs_to_pem(&[&root])).expect("write");
        std::fs::write(&bad, pem::certs_to_pem(&[&other_root])).expect("write");
        let now = SystemTime::now();
        let views: Vec<CertView> = chain.iter().map(|c| view(c, now).expect("view")).collect();
        assert_eq!(
            views[0].spiffe_id.as_deref(),
            Some("spiffe://example.org/web")
        );
        assert_eq!(views[0].dns_names, vec!["web.local".to_owned()]);
        assert!(!views[0].is_ca && views[1].is_ca);
        assert_eq!(views[0].key_type, "ECDSA P-256");
        assert!((3500..=3600).contains(&views[0].seconds_left));

        let ok = verify(&chain, &views[0], &good, None, now).expect("checked");
        assert_eq!(ok.result, "verifies");
        let fails = verify(&chain, &views[0], &bad, None, now).expect("checked");
        assert_eq!(fails.result, "fails");
        assert!(fails.detail.contains("does not chain"), "{}", fails.detail);
        let wrong_td = verify(&chain, &views[0], &good, Some("other.org"), now).expect("checked");
        assert_eq!(wrong_td.result, "fails");

        let report = InspectReport {
            file: good.clone(),
            certificates: views,
            verification: ok,
            now,
        };
        let text = report.human(Style::PLAIN);
        assert!(text.contains("Certificate 1 of 2 (leaf)"), "{text}");
        assert!(
            text.contains("  SPIFFE ID     spiffe://example.org/web\n"),
            "{text}"
        );
        assert!(text.contains("(in 59m"), "{text}");
        assert!(text.contains("Verification  verifies against"), "{text}");
    }

    #[test]
    fn a_root_verifies_only_if_it_is_in_the_bundle() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (root, _) = chain_for("example.org", "/web");
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, pem::certs_to_pem(&[&root])).expect("write");
        let now = SystemTime::now();
        let root_view = view(&root, now).expect("view");
        let v =
            verify(std::slice::from_ref(&root), &root_view, &bundle, None, now).expect("checked");
        assert_eq!(v.result, "verifies");
        let (other, _) = chain_for("example.org", "/x");
        let other_view = view(&other, now).expect("view");
        let v = verify(&[other], &other_view, &bundle, None, now).expect("checked");
        assert_eq!(v.result, "not checked");
    }
}
