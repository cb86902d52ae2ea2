//! Envelope encryption of resource bodies: AES-256-GCM (openssl) under data keys;
//! data keys are wrapped by the master key (key-encryption key). The associated
//! data binds a ciphertext to its row (type, id, version), so a sealed body cannot
//! be moved to another row. Rotation re-wraps data keys; rows are not rewritten.
//!
//! Architecture invariant: crypto knows nothing of HTTP or of the database; the
//! store persists the wrapped keys this module produces.

mod keys;

pub use keys::{DataKey, KeyError, Keyring, MasterKey, WrappedKey};
