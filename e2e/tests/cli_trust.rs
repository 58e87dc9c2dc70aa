//! `trellis cert revoke` and `trellis root ...` as an operator runs them: the built binary
//! against a real `trellis-ca` on 127.0.0.1, each test with its own CA, HOME and context.

mod common;
// Revocation and rotation live in files of their own but in this test binary, so the suite
// links once.
#[path = "cli_trust/revoke.rs"]
mod revoke;
#[path = "cli_trust/roots.rs"]
mod roots;
