//! Authentication for a resource server: OIDC discovery, a JWKS cache that
//! follows key rotation, JWT verification into an `Identity`, a verified-token
//! cache, and the local keys and token minting of `--dev` mode.
//!
//! Arca never sees passwords: it only verifies tokens an IdP has signed.

pub mod settings;

pub use settings::{Audience, AuthSettings};
