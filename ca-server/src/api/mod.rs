//! The gRPC services: thin adapters from protobuf to the CA's own operations.

pub mod admin;
mod convert;
pub mod workload;
