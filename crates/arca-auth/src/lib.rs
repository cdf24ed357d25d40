//! Authentication for a resource server: OIDC discovery, a JWKS cache that
//! follows key rotation, JWT verification into an `Identity`, a verified-token
//! cache, and the local keys and token minting of `--dev` mode.
//!
//! Arca never sees passwords: it only verifies tokens an IdP has signed.

pub mod dev;
pub mod identity;
pub mod keys;
pub mod settings;
pub mod verifier;

pub use dev::{DEV_AUDIENCE, DEV_ISSUER, DevKeys, MintRequest};
pub use identity::Identity;
pub use settings::{Audience, AuthSettings};
pub use verifier::{AuthError, Authenticator, MAX_TOKEN_BYTES};
