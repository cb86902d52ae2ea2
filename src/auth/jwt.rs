//! fhirgate's own JWTs: ES256 signing keys (created on first start, rotated by
//! `fhirgate keys rotate`, kept sealed in the database), the access-token and
//! `id_token` claims, signing, and the verification of its own tokens
//! (signature, `iss`, `aud`, `exp`/`nbf` with at most 5 s of leeway).
//!
//! Every node reads the keys from the database; a token signed with a key this
//! node has not seen yet (another node rotated) makes it reload them, at most
//! once per [`RELOAD_EVERY`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Clock leeway on `exp` and `nbf` of fhirgate's own tokens (DESIGN section 11).
pub const LEEWAY_SECS: u64 = 5;
/// The fastest this node reloads its signing keys on an unknown `kid`.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A retired signing key stays published at least this long (the longest a
/// refresh may take to be used is not bounded by it: refresh tokens are opaque).
pub const MIN_KEY_LIFETIME_SECS: u64 = 3600;
/// The one algorithm of fhirgate's tokens.
pub const ALG: &str = "ES256";

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a JWT fhirgate can read: {0}")]
    Malformed(String),
    #[error("the token's algorithm is not {ALG}")]
    Algorithm,
    #[error("the token names a signing key fhirgate does not have")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not this server")]
    Audience,
    #[error("the token's issuer is not this server")]
    Issuer,
    #[error("the token lacks a required claim: {0}")]
    MissingClaim(String),
    #[error("no signing key: {0}")]
    NoKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

impl JwtError {
    /// Maps a `jsonwebtoken` verification failure.
    pub fn from_verification(e: jsonwebtoken::errors::Error) -> JwtError {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => JwtError::Signature,
            K::ExpiredSignature => JwtError::Expired,
            K::ImmatureSignature => JwtError::NotYetValid,
            K::InvalidAudience => JwtError::Audience,
            K::InvalidIssuer => JwtError::Issuer,
            K::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
            K::InvalidAlgorithm | K::InvalidAlgorithmName => JwtError::Algorithm,
            other => JwtError::Malformed(format!("{other:?}")),
        }
    }
}

/// The claims of an access token fhirgate issues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub client_id: String,
    pub scope: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The user's role (bounds AuditEvent access and operator work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The grant (refresh-token family) the token belongs to: revoking the
    /// grant revokes the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_of_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_reason: Option<String>,
}

/// The claims of an OpenID Connect `id_token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One signing key, ready to verify (and to sign, where this node can open it).
struct SigningKey {
    kid: String,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    public_jwk: serde_json::Value,
}

/// fhirgate's signing keys as this node knows them; the newest signs.
pub struct Signer {
    keys: RwLock<Vec<Arc<SigningKey>>>,
    last_reload: Mutex<Option<Instant>>,
    issuer: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// The keys of the database; the first start makes one.
    pub fn load(store: &Store, issuer: &str) -> Result<Signer, JwtError> {
        if store.auth_signing_keys()?.is_empty() {
            new_key(store)?;
        }
        let signer = Signer {
            keys: RwLock::new(Vec::new()),
            last_reload: Mutex::new(None),
            issuer: issuer.to_string(),
        };
        signer.reload(store)?;
        Ok(signer)
    }

    /// Reads the keys again (a rotation made by `fhirgate keys rotate`).
    pub fn reload(&self, store: &Store) -> Result<(), JwtError> {
        let mut keys = Vec::new();
        for row in store.auth_signing_keys()? {
            if row.alg != ALG {
                continue;
            }
            let jwk: serde_json::Value = serde_json::from_str(&row.public_jwk)
                .map_err(|e| JwtError::NoKey(e.to_string()))?;
            let (Some(x), Some(y)) = (jwk["x"].as_str(), jwk["y"].as_str()) else {
                return Err(JwtError::NoKey(format!("key {} has no x/y", row.kid)));
            };
            keys.push(Arc::new(SigningKey {
                kid: row.kid.clone(),
                encoding: row.private_pkcs8.as_deref().map(EncodingKey::from_ec_der),
                decoding: DecodingKey::from_ec_components(x, y)
                    .map_err(|e| JwtError::NoKey(e.to_string()))?,
                public_jwk: jwk,
            }));
        }
        if !keys.iter().any(|k| k.encoding.is_some()) {
            return Err(JwtError::NoKey(
                "no ES256 signing key this node can open (restart it after `keys rotate`)".into(),
            ));
        }
        *self.keys.write() = keys;
        *self.last_reload.lock() = Some(Instant::now());
        Ok(())
    }

    /// Reloads on an unknown `kid`, unless it reloaded moments ago.
    fn reload_for_unknown_kid(&self, store: &Store) -> bool {
        {
            let mut last = self.last_reload.lock();
            if last.is_some_and(|t| t.elapsed() < RELOAD_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.reload(store) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not reload the signing keys");
                false
            }
        }
    }

    /// The public keys (`/auth/jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .read()
            .iter()
            .map(|k| k.public_jwk.clone())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Signs claims with the newest key this node can open (a key made by
    /// `keys rotate` under a data key newer than this node's start signs after
    /// its restart; until then its public half still verifies).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, JwtError> {
        let key = self
            .keys
            .read()
            .iter()
            .find(|k| k.encoding.is_some())
            .cloned()
            .ok_or_else(|| JwtError::NoKey("no signing key loaded".into()))?;
        let Some(encoding) = &key.encoding else {
            return Err(JwtError::NoKey("no signing key loaded".into()));
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, encoding).map_err(|e| JwtError::NoKey(e.to_string()))
    }

    /// Verifies one of fhirgate's access tokens: ES256 with a known key, `iss`
    /// and `aud` the FHIR base, `exp`/`nbf` within [`LEEWAY_SECS`]. `check_time`
    /// false accepts an expired token (revocation of an expired token).
    pub fn verify(
        &self,
        store: Option<&Store>,
        token: &str,
        check_time: bool,
    ) -> Result<AccessClaims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(JwtError::from_verification)?;
        if header.alg != Algorithm::ES256 {
            return Err(JwtError::Algorithm);
        }
        let kid = header.kid.ok_or(JwtError::UnknownKey)?;
        let find = |kid: &str| self.keys.read().iter().find(|k| k.kid == kid).cloned();
        let key = match find(&kid) {
            Some(k) => k,
            None => match store {
                Some(s) if self.reload_for_unknown_kid(s) => {
                    find(&kid).ok_or(JwtError::UnknownKey)?
                }
                _ => return Err(JwtError::UnknownKey),
            },
        };
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = check_time;
        v.validate_exp = check_time;
        v.set_audience(&[&self.issuer]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &v)
            .map(|d| d.claims)
            .map_err(JwtError::from_verification)
    }
}

/// Makes a new ES256 signing key and stores it sealed; it signs from the next
/// (re)load on. Returns its `kid`.
pub fn new_key(store: &Store) -> Result<String, JwtError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let ec = EcKey::generate(&group)?;
    let mut ctx = BigNumContext::new()?;
    let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)?;
    let b64 = |b: &BigNum| -> Result<String, JwtError> {
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b.to_vec_padded(32)?))
    };
    let (x, y) = (b64(&x)?, b64(&y)?);
    // RFC 7638 thumbprint as the key id.
    let thumb_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(openssl::sha::sha256(thumb_input.as_bytes()));
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "x": x, "y": y,
        "kid": kid, "alg": ALG, "use": "sig",
    });
    let pkcs8 = PKey::from_ec_key(ec)?.private_key_to_pkcs8()?;
    store.auth_add_signing_key(
        &kid,
        ALG,
        &pkcs8,
        &jwk.to_string(),
        chrono::Utc::now().timestamp_micros(),
    )?;
    Ok(kid)
}

/// `fhirgate keys rotate`: a new signing key; keys older than every token they
/// may have signed (`keep_secs`) are dropped, the two newest always kept.
pub fn rotate(store: &Store, keep_secs: i64) -> Result<String, JwtError> {
    let kid = new_key(store)?;
    store.auth_prune_signing_keys(
        chrono::Utc::now().timestamp_micros() - keep_secs * 1_000_000,
        2,
    )?;
    Ok(kid)
}
