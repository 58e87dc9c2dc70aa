//! The SPIFFE Workload API, served to the local workload over a Unix domain socket, so that
//! SPIFFE-aware software (go-spiffe, java-spiffe, py-spiffe, the Rust `spiffe` crate,
//! ghostunnel, ...) gets the sidecar's X.509-SVID, key and bundle, with every rotation,
//! straight from Trellis.
//!
//! Specifications followed: *The SPIFFE Workload Endpoint* (transport, security header,
//! error codes) and *The SPIFFE Workload API* (the X.509-SVID profile, section 5), both in
//! the SPIFFE standards (`spiffe/spiffe`, `standards/`).
//!
//! # Who may connect
//!
//! Whoever can open the socket file. The Workload Endpoint spec (section 5) forbids asking
//! the client for a credential; SPIRE instead attests the caller's process, and, like SPIRE,
//! relies on the file system to decide who reaches the socket at all. Trellis serves exactly
//! one identity, the sidecar's own, so there is no per-caller choice to make: **the modes of
//! the socket file and of the directories above it are the access control.** `connect(2)`
//! on a Unix socket needs write permission on the socket file and search permission on
//! every directory of its path. The socket is created with mode [`SOCKET_MODE`] (0660: the
//! sidecar's user and group, never others); put it in a directory that only the sidecar and
//! its workload can traverse (in Kubernetes, an `emptyDir` shared by the two containers,
//! with the pod's `fsGroup` as the group). Anyone who can connect receives the workload's
//! private key.
//!
//! # What is served
//!
//! - `FetchX509SVID` (spec 5.2.1): the current SVID at once, then one message per rotation or
//!   bundle change, each the complete set (spec 4.3): SPIFFE ID, the DER chain leaf first,
//!   the PKCS#8 DER key and the DER roots of the trust domain.
//! - `FetchX509Bundles` (spec 5.2.2): `{ "spiffe://<td>": DER roots }`, again on every change.
//! - `FetchJWTSVID` (the spec's JWT-SVID profile): a token for the requested audience (required), signed by
//!   the CA for the sidecar's identity and cached per audience set until its half-life
//!   (`jwt.rs`). `FetchJWTBundles`: `{ "spiffe://<td>": JWK Set JSON }`, again on every
//!   bundle change. `ValidateJWTSVID`: ES256 with a bundle key named by `kid`,
//!   unexpired, for the audience; the SPIFFE ID and every claim. Served only when the
//!   socket is given a [`JwtSvids`]; otherwise the three calls answer `UNIMPLEMENTED` (the
//!   spec lets an operator disable a profile, section 1).
//!
//! Status codes (Workload Endpoint, section 6 and appendix A): `INVALID_ARGUMENT` for a call
//! without the `workload.spiffe.io: true` metadata; `UNAVAILABLE` while the sidecar has no
//! certificate yet (still bootstrapping) and when it shuts down; `PERMISSION_DENIED` on an
//! open `FetchX509SVID` stream when the certificate expired without renewal and is withdrawn
//! (the Workload API's signal that every SVID is redacted, section 5.2.1).
//!
//! gRPC clients on the C core (py-spiffe's `grpcio`, C++, Ruby, PHP) send the socket path as
//! the HTTP/2 `:authority`, which h2 refuses; [`authority`] rewrites it on the way in.

mod authority;
pub mod jwt;

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::PrivateKeyDer;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use trellis_proto::spiffe::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use trellis_proto::spiffe::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};

use crate::credentials::{Credentials, CredentialsRx};
use trellis_identity::TrustBundle;

use authority::AuthorityFix;
pub use jwt::JwtSvids;

/// The gRPC metadata key every request must carry with the value `true` (Workload Endpoint,
/// section 3: a guard against server-side request forgery).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Mode of the socket file: read and write for the owner and the group, nothing for others.
///
/// Connecting needs write permission on the socket, so this lets in the sidecar's own user
/// and its group, which is how the workload (normally another user, in another container)
/// is given access: share a group with it (in Kubernetes, the pod's `fsGroup`). Others are
/// never let in: anyone who connects gets the workload's private key. For a tighter setup,
/// run both as one user and make the socket's directory 0700.
pub const SOCKET_MODE: u32 = 0o660;

/// Mode of the socket's directory when this module has to create it (an existing directory
/// is left as the operator made it): traversable by the owner and the group only.
pub const SOCKET_DIR_MODE: u32 = 0o750;

/// The largest request accepted; Workload API requests are a few bytes (a JWT at most).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Binds the Workload API socket at `socket` and serves until `stop` becomes true (or its
/// sender is dropped), then removes the socket file.
///
/// A stale socket left by an earlier run is removed first; a path that is not a socket, or a
/// socket that another live process is serving, is refused. See [`WorkloadApiSocket::bind`].
pub async fn serve_workload_api(
    socket: PathBuf,
    creds: CredentialsRx,
    stop: CancellationToken,
) -> io::Result<()> {
    WorkloadApiSocket::bind(&socket)
        .await?
        .serve(creds, stop)
        .await
}

/// The Workload API gRPC service with the security-header check in front, for serving over
/// a transport of the caller's choice ([`WorkloadApiSocket::serve`] uses the Unix socket).
pub fn service(
    creds: CredentialsRx,
    stop: CancellationToken,
) -> InterceptedService<SpiffeWorkloadApiServer<WorkloadApi>, SecurityHeaderCheck> {
    service_with_jwt(creds, stop, None)
}

/// [`service`] with the JWT-SVID profile served by `jwt` (UNIMPLEMENTED without it).
pub fn service_with_jwt(
    creds: CredentialsRx,
    stop: CancellationToken,
    jwt: Option<Arc<JwtSvids>>,
) -> InterceptedService<SpiffeWorkloadApiServer<WorkloadApi>, SecurityHeaderCheck> {
    let server = SpiffeWorkloadApiServer::new(WorkloadApi { creds, stop, jwt })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    InterceptedService::new(server, SecurityHeaderCheck)
}

/// Refuses, with `INVALID_ARGUMENT`, every call that lacks `workload.spiffe.io: true`
/// (Workload Endpoint, section 3 and section 6: "MUST respond with gRPC status code
/// InvalidArgument"; the value is case sensitive).
#[derive(Clone, Copy, Debug)]
pub struct SecurityHeaderCheck;

impl tonic::service::Interceptor for SecurityHeaderCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let values = request.metadata().get_all(SECURITY_HEADER);
        let mut values = values.iter().peekable();
        let present = values.peek().is_some();
        if present && values.all(|v| v.as_bytes() == b"true") {
            return Ok(request);
        }
        tracing::debug!(
            peer_uid = peer_uid(&request),
            "Workload API call refused: no `workload.spiffe.io: true` metadata"
        );
        Err(Status::invalid_argument(
            "security header missing: every SPIFFE Workload API call must carry the gRPC \
             metadata `workload.spiffe.io: true` (SPIFFE Workload Endpoint, section 3); \
             use a SPIFFE client library, which sends it",
        ))
    }
}

/// The kernel-reported user id of the connected process, for logs.
fn peer_uid<T>(request: &Request<T>) -> Option<u32> {
    request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid())
}

/// A bound Workload API socket, not yet serving. Binding first lets a caller fail startup
/// on a bad path before anything else runs, and lets tests connect without racing.
#[derive(Debug)]
pub struct WorkloadApiSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, to remove it at the end only if it is still ours.
    file_id: (u64, u64),
    /// Serves the JWT-SVID profile, if set.
    jwt: Option<Arc<JwtSvids>>,
}

impl WorkloadApiSocket {
    /// Creates the socket at `path` with mode [`SOCKET_MODE`].
    ///
    /// The parent directory is created (mode [`SOCKET_DIR_MODE`]) if missing. A stale socket
    /// file is removed; a socket that accepts connections (another sidecar is serving it) or
    /// a path that is not a socket is refused, so a typo can never delete a file.
    ///
    /// The socket is bound inside a fresh 0700 directory, given its mode there, and then
    /// renamed into place, so it is never reachable with the process umask's looser mode.
    pub async fn bind(path: &Path) -> io::Result<Self> {
        if path.file_name().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "Workload API socket path {} has no file name",
                    path.display()
                ),
            ));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(SOCKET_DIR_MODE)
                .create(&parent)
                .map_err(|e| context(e, "create the socket directory", &parent))?;
        }
        remove_stale(path).await?;

        let staging = staging_dir(&parent);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|e| context(e, "create a private staging directory", &staging))?;
        let result = bind_in(&staging, path);
        // The staging directory is empty once the socket has moved out (or failed to).
        let _ = std::fs::remove_file(staging.join("s"));
        let _ = std::fs::remove_dir(&staging);
        let listener = result?;

        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| context(e, "inspect the new socket", path))?;
        tracing::info!(
            socket = %path.display(),
            mode = format_args!("{SOCKET_MODE:o}"),
            "Workload API socket bound"
        );
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            file_id: (meta.dev(), meta.ino()),
            jwt: None,
        })
    }

    /// Serves the JWT-SVID profile through `jwt`.
    pub fn with_jwt_svids(mut self, jwt: Arc<JwtSvids>) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the Workload API until `stop` becomes true (or its sender is dropped): open
    /// streams end with `UNAVAILABLE`, then the server drains and the socket file is removed.
    pub async fn serve(self, creds: CredentialsRx, stop: CancellationToken) -> io::Result<()> {
        let Self {
            listener,
            path,
            file_id,
            jwt,
        } = self;
        let shutdown = stop.clone();
        let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new));
        let result = tonic::transport::Server::builder()
            .add_service(service_with_jwt(creds, stop, jwt))
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.cancelled().await;
            })
            .await
            .map_err(io::Error::other);
        // Remove the file only if it is still the socket this server created.
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && (meta.dev(), meta.ino()) == file_id
        {
            let _ = std::fs::remove_file(&path);
        }
        tracing::info!(socket = %path.display(), "Workload API stopped");
        result
    }
}

/// Binds in `staging`, sets the mode, and moves the socket to `path`.
fn bind_in(staging: &Path, path: &Path) -> io::Result<UnixListener> {
    let temp = staging.join("s");
    let listener =
        UnixListener::bind(&temp).map_err(|e| context(e, "bind the Workload API socket", &temp))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| context(e, "set the socket's mode", &temp))?;
    // A listening socket keeps working under its new name: connect(2) finds it by inode.
    std::fs::rename(&temp, path).map_err(|e| context(e, "move the socket into place", path))?;
    Ok(listener)
}

/// A directory next to the socket that no other bind (in this or another process) uses.
/// Its name is short because the socket is first bound inside it, and a socket path must
/// fit the kernel's 108-byte `sun_path`.
fn staging_dir(parent: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    parent.join(format!(".wl-{}-{n}", std::process::id()))
}

/// Removes a socket file left by a process that is gone; refuses anything else.
async fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, "inspect", path)),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it: choose another \
                 Workload API socket path or remove the file",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process is serving the Workload API socket {}; stop it or choose \
                 another path",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing a stale Workload API socket");
            std::fs::remove_file(path).map_err(|e| context(e, "remove the stale socket", path))
        }
        Err(e) => Err(context(e, "probe the existing socket", path)),
    }
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("could not {what} {}: {e}", path.display()),
    )
}

/// The `SpiffeWorkloadAPI` implementation over the identity agent's credentials.
#[derive(Clone)]
pub struct WorkloadApi {
    creds: CredentialsRx,
    stop: CancellationToken,
    jwt: Option<Arc<JwtSvids>>,
}

impl fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spiffe_id = self
            .creds
            .borrow()
            .as_ref()
            .map(|c| c.svid.spiffe_id.to_string());
        f.debug_struct("WorkloadApi")
            .field("spiffe_id", &spiffe_id)
            .finish_non_exhaustive()
    }
}

/// What a stream does when the credentials are withdrawn (expired without renewal).
#[derive(Clone, Copy)]
enum OnWithdrawal {
    /// End the stream with `PERMISSION_DENIED`: the SVID is redacted (spec 5.2.1).
    Redact,
    /// Keep the stream: the roots did not change (bundles stay valid without a certificate).
    Wait,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ReceiverStream<Result<X509svidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<JwtBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        tracing::debug!(peer_uid = peer_uid(&request), "FetchX509SVID");
        self.follow(x509_svid_response, OnWithdrawal::Redact)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        tracing::debug!(peer_uid = peer_uid(&request), "FetchX509Bundles");
        self.follow(x509_bundles_response, OnWithdrawal::Wait)
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        tracing::debug!(peer_uid = peer_uid(&request), "FetchJWTSVID");
        let jwt = self.jwt()?;
        let body = request.into_inner();
        if body.audience.is_empty() || body.audience.iter().any(|a| a.trim().is_empty()) {
            return Err(Status::invalid_argument(
                "FetchJWTSVID needs at least one audience, none empty (the `aud` claim: the \
                 service that will receive the token)",
            ));
        }
        let creds = self.current()?;
        if !body.spiffe_id.is_empty() && body.spiffe_id != creds.svid.spiffe_id.as_str() {
            return Err(Status::permission_denied(format!(
                "this sidecar serves only {}, not {}",
                creds.svid.spiffe_id, body.spiffe_id
            )));
        }
        let (spiffe_id, token) = jwt.fetch(&creds, body.audience).await?;
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id,
                svid: token.to_string(),
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        tracing::debug!(peer_uid = peer_uid(&request), "FetchJWTBundles");
        self.jwt()?;
        self.follow(jwt_bundles_response, OnWithdrawal::Wait)
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        tracing::debug!(peer_uid = peer_uid(&request), "ValidateJWTSVID");
        let jwt = self.jwt()?;
        let body = request.into_inner();
        if body.audience.trim().is_empty() {
            return Err(Status::invalid_argument(
                "ValidateJWTSVID needs the audience the token must be for",
            ));
        }
        if body.svid.is_empty() {
            return Err(Status::invalid_argument(
                "ValidateJWTSVID needs the token (svid)",
            ));
        }
        let creds = self.current()?;
        let valid = jwt
            .validate(&creds, &body.svid, &body.audience)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: valid.spiffe_id.to_string(),
            claims: Some(jwt::to_proto_struct(valid.claims)),
        }))
    }
}

impl WorkloadApi {
    fn jwt(&self) -> Result<&Arc<JwtSvids>, Status> {
        self.jwt.as_ref().ok_or_else(jwt_unimplemented)
    }

    fn current(&self) -> Result<Arc<Credentials>, Status> {
        if self.stop.is_cancelled() {
            return Err(shutting_down());
        }
        self.creds.borrow().clone().ok_or_else(not_ready)
    }
}

fn jwt_unimplemented() -> Status {
    Status::unimplemented(
        "the JWT-SVID profile is not served on this socket; use FetchX509SVID / \
         FetchX509Bundles",
    )
}

/// No certificate yet: the endpoint is running but still initialising (Workload Endpoint,
/// section 6 and appendix A: "Unavailable", retry with a backoff).
fn not_ready() -> Status {
    Status::unavailable(
        "the sidecar has no certificate yet (its identity agent is still bootstrapping, or \
         its certificate expired and could not be renewed); retry with a backoff",
    )
}

fn shutting_down() -> Status {
    Status::unavailable("the sidecar is shutting down; reconnect with a backoff")
}

/// The credentials disappeared from an open stream: every SVID is redacted, which the
/// Workload API (section 5.2.1) signals with "PermissionDenied"; clients stop using it.
fn withdrawn() -> Status {
    Status::permission_denied(
        "the sidecar's certificate expired without renewal and was withdrawn; stop using it \
         and retry with a backoff",
    )
}

impl WorkloadApi {
    /// Answers a streaming call: the current state at once (spec 4.3: "as soon as possible"),
    /// then a complete new message whenever the rendered state changes.
    fn follow<T>(
        &self,
        render: fn(&Credentials) -> Result<T, Status>,
        on_withdrawal: OnWithdrawal,
    ) -> Result<Response<ReceiverStream<Result<T, Status>>>, Status>
    where
        T: PartialEq + Clone + Send + 'static,
    {
        if self.stop.is_cancelled() {
            return Err(shutting_down());
        }
        let mut creds = self.creds.clone();
        let current = creds.borrow_and_update().clone();
        let first = render(current.as_deref().ok_or_else(not_ready)?)?;
        // One slot: a slow reader holds back the sender, and the watch channel meanwhile
        // keeps only the newest credentials, so the reader always gets the latest state.
        let (tx, rx) = mpsc::channel(1);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            if let Some(end) = stream_updates(first, creds, stop, &tx, render, on_withdrawal).await
            {
                let _ = tx.send(Err(end)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends `first`, then every changed rendering, until the client goes away (`None`) or the
/// stream must end with a status (`Some`).
async fn stream_updates<T: PartialEq + Clone>(
    first: T,
    mut creds: CredentialsRx,
    stop: CancellationToken,
    tx: &mpsc::Sender<Result<T, Status>>,
    render: fn(&Credentials) -> Result<T, Status>,
    on_withdrawal: OnWithdrawal,
) -> Option<Status> {
    let mut last = first.clone();
    let mut pending = Some(first);
    loop {
        if let Some(message) = pending.take() {
            tokio::select! {
                sent = tx.send(Ok(message)) => if sent.is_err() { return None },
                _ = stop.cancelled() => return Some(shutting_down()),
            }
        }
        tokio::select! {
            _ = tx.closed() => return None,
            _ = stop.cancelled() => return Some(shutting_down()),
            changed = creds.changed() => {
                if changed.is_err() {
                    return Some(Status::unavailable("the sidecar's identity agent stopped"));
                }
                let current = creds.borrow_and_update().clone();
                match (current, on_withdrawal) {
                    (Some(c), _) => {
                        let next = match render(&c) {
                            Ok(next) => next,
                            Err(status) => return Some(status),
                        };
                        if next != last {
                            last = next.clone();
                            pending = Some(next);
                        }
                    }
                    (None, OnWithdrawal::Redact) => return Some(withdrawn()),
                    (None, OnWithdrawal::Wait) => {}
                }
            }
        }
    }
}

/// The trust domain's key in bundle maps: its SPIFFE ID, `spiffe://<td>` (spec 5.1).
fn trust_domain_key(creds: &Credentials) -> String {
    format!("spiffe://{}", creds.bundle.trust_domain())
}

fn concat<C: AsRef<[u8]>>(certs: &[C]) -> Vec<u8> {
    certs
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}

/// One X.509-SVID (spec 5.1): chain leaf first, PKCS#8 key, the trust domain's roots.
fn x509_svid_response(creds: &Credentials) -> Result<X509svidResponse, Status> {
    let key = match &creds.identity.key {
        PrivateKeyDer::Pkcs8(key) => key.secret_pkcs8_der().to_vec(),
        // The agent always makes PKCS#8 keys; the spec allows nothing else.
        _ => return Err(Status::internal("the sidecar's key is not in PKCS#8 form")),
    };
    Ok(X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: creds.svid.spiffe_id.to_string(),
            x509_svid: concat(&creds.identity.chain),
            x509_svid_key: key,
            bundle: concat(creds.bundle.roots()),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: federated(creds, |b| concat(b.roots())),
    })
}

/// The federated trust domains' entries of a bundle map, keyed like the own one.
fn federated<V>(
    creds: &Credentials,
    value: impl Fn(&TrustBundle) -> V,
) -> std::collections::HashMap<String, V> {
    creds
        .bundle
        .federated()
        .iter()
        .map(|(td, bundle)| (format!("spiffe://{td}"), value(bundle)))
        .collect()
}

/// The JWT bundle map: each trust domain's JWT keys as a JWK Set, the own and the
/// federated ones.
fn jwt_bundles_response(creds: &Credentials) -> Result<JwtBundlesResponse, Status> {
    let jwks = |b: &TrustBundle| trellis_identity::jwk::set_json(b.jwt_keys());
    let mut bundles = federated(creds, jwks);
    bundles.insert(trust_domain_key(creds), jwks(&creds.bundle));
    Ok(JwtBundlesResponse { bundles })
}

/// The bundle map (spec 5.2.2): the sidecar's own trust domain and the federated ones.
fn x509_bundles_response(creds: &Credentials) -> Result<X509BundlesResponse, Status> {
    let roots = |b: &TrustBundle| concat(b.roots());
    let mut bundles = federated(creds, roots);
    bundles.insert(trust_domain_key(creds), roots(&creds.bundle));
    Ok(X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    })
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    fn with_header(value: Option<&'static str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request.metadata_mut().insert(
                SECURITY_HEADER,
                tonic::metadata::MetadataValue::from_static(value),
            );
        }
        request
    }

    #[test]
    fn only_the_exact_security_header_passes() {
        assert!(SecurityHeaderCheck.call(with_header(Some("true"))).is_ok());
        for refused in [None, Some("True"), Some("1"), Some("")] {
            let status = SecurityHeaderCheck
                .call(with_header(refused))
                .expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{refused:?}");
        }
    }

    #[tokio::test]
    async fn binds_with_mode_0660_and_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("run").join("api.sock");

        let first = WorkloadApiSocket::bind(&path).await.expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        let dir_mode = std::fs::metadata(path.parent().expect("parent"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(
            dir_mode & 0o777 & !SOCKET_DIR_MODE,
            0,
            "{dir_mode:o}: umask may only tighten"
        );
        UnixStream::connect(&path)
            .await
            .expect("connects after the rename");

        // Live: refused. Stale (listener gone, file left behind): replaced.
        let live = WorkloadApiSocket::bind(&path).await.expect_err("in use");
        assert_eq!(live.kind(), io::ErrorKind::AddrInUse, "{live}");
        drop(first);
        assert!(path.exists(), "a dropped listener leaves its file behind");
        WorkloadApiSocket::bind(&path)
            .await
            .expect("stale socket replaced");

        // Nothing but the socket is left in the directory (no staging directories).
        let entries: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("api.sock")]);
    }

    #[tokio::test]
    async fn never_removes_a_file_that_is_not_a_socket() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("important.txt");
        std::fs::write(&path, "keep me").expect("write");
        let err = WorkloadApiSocket::bind(&path).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "keep me");
    }
}
