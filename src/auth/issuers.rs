//! Remote JWK Sets (a backend client's `jwks_uri`, an external issuer's keys)
//! with a cache and a rate-limited refresh on an unknown `kid`, and access
//! tokens of the external identity providers of `auth.issuers` (RS256 or
//! ES256; `scope`, `fhirUser`, `patient` claims).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;

use super::jwt::{JwtError, LEEWAY_SECS};
use super::AuthService;
use crate::config::IssuerSettings;

/// How long a fetched key set is used without asking again.
const FRESH_FOR: Duration = Duration::from_secs(3600);
/// The fastest a key set is fetched again for an unknown `kid`.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: u64 = 512 * 1024;

struct Cached {
    set: Arc<JwkSet>,
    fetched: Instant,
    /// The last fetch asked for by an unknown `kid`.
    forced: Option<Instant>,
}

/// Key sets by URI.
#[derive(Default)]
pub struct KeySets {
    cache: Mutex<HashMap<String, Cached>>,
}

impl KeySets {
    /// The key set at `uri`: cached, or fetched. `refresh` (an unknown `kid`)
    /// fetches it again, at most once per [`REFRESH_EVERY`], so tokens with made-up
    /// key ids cannot make fhirgate hammer the key server.
    pub async fn get(&self, uri: &str, refresh: bool) -> Result<Arc<JwkSet>, String> {
        let mut forced = None;
        {
            let mut cache = self.cache.lock();
            if let Some(c) = cache.get_mut(uri) {
                forced = c.forced;
                let stale = c.fetched.elapsed() >= FRESH_FOR;
                if !refresh && !stale {
                    return Ok(c.set.clone());
                }
                if refresh {
                    if c.forced.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                        return Ok(c.set.clone());
                    }
                    // Claimed now, so concurrent requests do not fetch too.
                    c.forced = Some(Instant::now());
                    forced = c.forced;
                }
            }
        }
        let u = uri.to_string();
        let fetched = tokio::task::spawn_blocking(move || fetch(&u))
            .await
            .map_err(|e| format!("fetch failed: {e}"))?;
        let mut cache = self.cache.lock();
        match fetched {
            Ok(set) => {
                let set = Arc::new(set);
                cache.insert(
                    uri.to_string(),
                    Cached {
                        set: set.clone(),
                        fetched: Instant::now(),
                        forced: if refresh {
                            Some(Instant::now())
                        } else {
                            forced
                        },
                    },
                );
                Ok(set)
            }
            Err(e) => {
                tracing::warn!(jwks.uri = %uri, error = %e, "a JWK Set could not be fetched");
                match cache.get_mut(uri) {
                    // Keep using the keys we have, and do not ask again at once.
                    Some(c) => {
                        c.fetched = Instant::now()
                            .checked_sub(FRESH_FOR - REFRESH_EVERY)
                            .unwrap_or_else(Instant::now);
                        Ok(c.set.clone())
                    }
                    None => Err(e),
                }
            }
        }
    }
}

fn fetch(uri: &str) -> Result<JwkSet, String> {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build(),
    );
    let mut resp = agent
        .get(uri)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| format!("GET {uri}: {e}"))?;
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES)
        .read_to_string()
        .map_err(|e| format!("GET {uri}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{uri} is not a JWK Set: {e}"))
}

/// The claims fhirgate reads from an external issuer's token.
#[derive(Debug, Clone, Deserialize)]
pub struct ExternalClaims {
    pub sub: Option<String>,
    pub exp: i64,
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default, rename = "fhirUser")]
    pub fhir_user: Option<String>,
    #[serde(default)]
    pub patient: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub azp: Option<String>,
}

impl AuthService {
    /// The configured issuer whose tokens name `iss`.
    pub(crate) fn external_issuer(&self, iss: &str) -> Option<&IssuerSettings> {
        self.settings.issuers.iter().find(|i| i.issuer == iss)
    }

    /// Verifies an external issuer's token: RS256/ES256 with a key of its JWK
    /// Set (fetched again once for an unknown `kid`), its `iss`, the configured
    /// `audience`, `exp`/`nbf` with 5 s of leeway.
    pub(crate) async fn verify_external(
        &self,
        issuer: &IssuerSettings,
        token: &str,
    ) -> Result<ExternalClaims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(JwtError::from_verification)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtError::Algorithm);
        }
        let kid = header.kid.clone().ok_or(JwtError::UnknownKey)?;
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_audience(&[&issuer.audience]);
        v.set_issuer(&[&issuer.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut set = self
            .keysets
            .get(&issuer.jwks_uri, false)
            .await
            .map_err(JwtError::NoKey)?;
        if set.find(&kid).is_none() {
            set = self
                .keysets
                .get(&issuer.jwks_uri, true)
                .await
                .map_err(JwtError::NoKey)?;
        }
        let jwk = set.find(&kid).ok_or(JwtError::UnknownKey)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| JwtError::UnknownKey)?;
        jsonwebtoken::decode::<ExternalClaims>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(JwtError::from_verification)
    }
}
