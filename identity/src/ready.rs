//! The ready file: one JSON document a Trellis binary writes once every listener is bound
//! (`--ready-file PATH`), so that programs driving it (`trellis up`, the bench, the tests, a
//! supervisor) learn its addresses without reading its log. Written atomically (temp file
//! and rename), so a reader sees either no file or the whole document.
//!
//! ```json
//! {"program":"trellis-sidecar","pid":4242,
//!  "listeners":{"admin":"127.0.0.1:15020","inbound":"127.0.0.1:15006"},
//!  "spiffe_id":"spiffe://example.org/web"}
//! ```
//!
//! `listeners` maps a listener's name to the address it is bound to (the real port when
//! the configuration said port 0); `spiffe_id` is the binary's own identity where it has
//! one when it starts. The names are a contract, listed in ARCHITECTURE.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::files;

/// What a running binary reports in its ready file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The binary's name, e.g. `trellis-ca`.
    pub program: String,
    /// Its process id.
    pub pid: u32,
    /// Every bound listener by name.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// The binary's own SPIFFE ID, where it has one at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
}

/// A ready file that exists but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// It could not be read.
    #[error("cannot read the ready file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a ready document.
    #[error("the ready file {path} is not a ready document: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl Ready {
    /// The report of this process (`program`), with no listener yet.
    pub fn new(program: &str) -> Self {
        Self {
            program: program.to_owned(),
            pid: std::process::id(),
            listeners: BTreeMap::new(),
            spiffe_id: None,
        }
    }

    /// Adds a bound listener.
    pub fn listener(mut self, name: impl Into<String>, addr: SocketAddr) -> Self {
        self.listeners.insert(name.into(), addr);
        self
    }

    /// The address of listener `name`, if it is bound.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).copied()
    }

    /// Writes the document to `path` atomically, readable by all (it holds no secret).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        files::write_atomic(path, &json, files::PUBLIC_MODE)
    }

    /// Reads the document at `path`; `None` while it does not exist yet.
    pub fn read(path: &Path) -> Result<Option<Self>, ReadyError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ReadyError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| ReadyError::Parse {
                path: path.display().to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_document_reads_back_whole_and_absent_is_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ready.json");
        assert!(Ready::read(&path).expect("absent is fine").is_none());
        let mut ready = Ready::new("trellis-test")
            .listener("grpc", "127.0.0.1:8443".parse().expect("addr"))
            .listener("http", "[::1]:9090".parse().expect("addr"));
        ready.spiffe_id = Some("spiffe://example.org/trellis/ca".into());
        ready.write(&path).expect("write");
        let back = Ready::read(&path).expect("read").expect("present");
        assert_eq!(back, ready);
        assert_eq!(back.pid, std::process::id());
        assert_eq!(back.addr("http"), Some("[::1]:9090".parse().expect("addr")));
        assert_eq!(back.addr("admin"), None);
        // The temp file is gone: only the document is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["ready.json"]);
        let text = std::fs::read_to_string(&path).expect("text");
        let raw: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(raw["listeners"]["grpc"], "127.0.0.1:8443");
    }

    #[test]
    fn a_foreign_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ready.json");
        std::fs::write(&path, "listening on 127.0.0.1:1\n").expect("write");
        let error = Ready::read(&path).expect_err("not JSON").to_string();
        assert!(error.contains("ready.json") && error.contains("not a ready document"));
    }
}
