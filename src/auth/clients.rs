//! OAuth clients: registration (`fhirgate clients add|list|remove`) and client
//! authentication at the token, introspection and revocation endpoints:
//! `client_secret_basic`, `client_secret_post`, `private_key_jwt` (SMART
//! Backend Services: RS384 or ES384 assertions checked against the client's JWK
//! Set, `aud` the token endpoint, `exp` at most 5 minutes ahead, `jti` never
//! twice, on any node), and public clients that only name themselves.

use std::path::PathBuf;

use actix_web::http::header;
use actix_web::HttpRequest;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::scopes::Scopes;
use super::{digest, field, now, random_token, same, AuthService, OAuthError};
use crate::store::{ClientRow, Store, StoreError};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The longest a client assertion may live (SMART Backend Services).
const ASSERTION_MAX_SECS: i64 = 300;
const GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", "client_credentials"];

/// How a client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKind {
    /// No secret (browser and native apps); PKCE protects its codes.
    Public,
    /// A generated secret, shown once.
    Secret,
    /// Assertions signed with a key of this JWK Set file.
    JwksFile(PathBuf),
    /// Assertions signed with a key published here.
    JwksUri(String),
}

/// `fhirgate clients add`.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub kind: ClientKind,
    /// The most the client may get (None: every scope).
    pub scope: Option<String>,
    /// None: the usual ones for the kind.
    pub grant_types: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// What `clients add` prints: the secret exists only here, once.
#[derive(Debug, serde::Serialize)]
pub struct Registered {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

fn valid_redirect_uri(u: &str) -> bool {
    let Some((scheme, rest)) = u.split_once(':') else {
        return false;
    };
    !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && u.len() <= 2000
        && !u.contains('#')
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
        && (!matches!(scheme, "http" | "https") || rest.starts_with("//") && rest.len() > 2)
}

/// Registers a client; a secret client gets its secret back, once.
pub fn register(store: &Store, spec: &ClientSpec) -> Result<Registered, ClientError> {
    let name = spec.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ClientError::Invalid(
            "--name must be 1 to 200 characters".into(),
        ));
    }
    for u in &spec.redirect_uris {
        if !valid_redirect_uri(u) {
            return Err(ClientError::Invalid(format!(
                "`{u}` is not an absolute redirect URI without a fragment"
            )));
        }
    }
    if let Some(s) = &spec.scope {
        Scopes::parse_strict(s).map_err(|e| ClientError::Invalid(format!("--scope: {e}")))?;
    }
    let confidential = spec.kind != ClientKind::Public;
    let grant_types: Vec<String> = match &spec.grant_types {
        Some(g) => g.clone(),
        None => {
            let mut g = Vec::new();
            if !spec.redirect_uris.is_empty() {
                g.extend([
                    "authorization_code".to_string(),
                    "refresh_token".to_string(),
                ]);
            }
            if confidential {
                g.push("client_credentials".into());
            }
            g
        }
    };
    if grant_types.is_empty() {
        return Err(ClientError::Invalid(
            "a public client needs a --redirect-uri (it can only use the authorization code flow)"
                .into(),
        ));
    }
    for g in &grant_types {
        if !GRANT_TYPES.contains(&g.as_str()) {
            return Err(ClientError::Invalid(format!(
                "`{g}` is not a grant type (authorization_code, refresh_token, client_credentials)"
            )));
        }
    }
    if grant_types.iter().any(|g| g == "client_credentials") && !confidential {
        return Err(ClientError::Invalid(
            "client_credentials needs a confidential client (--secret, --jwks-file or --jwks-uri)"
                .into(),
        ));
    }
    if grant_types.iter().any(|g| g == "authorization_code") && spec.redirect_uris.is_empty() {
        return Err(ClientError::Invalid(
            "authorization_code needs at least one --redirect-uri".into(),
        ));
    }
    let mut secret = None;
    let (auth_method, secret_hash, jwks, jwks_uri) = match &spec.kind {
        ClientKind::Public => ("none", None, None, None),
        ClientKind::Secret => {
            let s = random_token()?;
            let h = digest(&s);
            secret = Some(s);
            ("client_secret", Some(h), None, None)
        }
        ClientKind::JwksFile(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ClientError::File {
                path: path.display().to_string(),
                source,
            })?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
                ClientError::Invalid(format!("{} is not a JWK Set: {e}", path.display()))
            })?;
            if set.keys.is_empty() {
                return Err(ClientError::Invalid(format!(
                    "{} holds no key",
                    path.display()
                )));
            }
            if set.keys.iter().any(|k| DecodingKey::from_jwk(k).is_err()) {
                return Err(ClientError::Invalid(format!(
                    "{} holds a key that is not an RSA or EC public key",
                    path.display()
                )));
            }
            ("private_key_jwt", None, Some(text), None)
        }
        ClientKind::JwksUri(u) => {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(ClientError::Invalid(format!(
                    "--jwks-uri `{u}` is not an http(s) URL"
                )));
            }
            ("private_key_jwt", None, None, Some(u.clone()))
        }
    };
    let row = ClientRow {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        auth_method: auth_method.into(),
        secret_hash,
        jwks,
        jwks_uri,
        redirect_uris: spec.redirect_uris.clone(),
        scope: spec.scope.clone(),
        grant_types,
        created: now(),
    };
    store.auth_add_client(&row)?;
    Ok(Registered {
        client_id: row.client_id,
        client_secret: secret,
    })
}

/// `clients list`: one JSON object per client, no secrets.
pub fn list(store: &Store) -> Result<Vec<serde_json::Value>, ClientError> {
    Ok(store
        .auth_clients()?
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "client_id": c.client_id,
                "name": c.name,
                "token_endpoint_auth_method": match c.auth_method.as_str() {
                    "client_secret" => "client_secret_basic",
                    other => other,
                },
                "redirect_uris": c.redirect_uris,
                "scope": c.scope,
                "grant_types": c.grant_types,
                "jwks_uri": c.jwks_uri,
                "created": c.created,
            })
        })
        .collect())
}

/// `clients remove`.
pub fn remove(store: &Store, client_id: &str) -> Result<bool, ClientError> {
    Ok(store.auth_remove_client(client_id)?)
}

/// A client that proved who it is (or a public client that named itself).
#[derive(Debug, Clone)]
pub struct Client {
    pub row: ClientRow,
    /// The most it may get (None: every scope).
    pub max: Option<Scopes>,
    pub public: bool,
}

impl Client {
    fn of(row: ClientRow) -> Client {
        let max = row.scope.as_deref().map(|s| Scopes::parse_lenient(s).0);
        Client {
            public: row.auth_method == "none",
            row,
            max,
        }
    }

    pub fn id(&self) -> &str {
        &self.row.client_id
    }

    pub fn may_use(&self, grant_type: &str) -> bool {
        self.row.grant_types.iter().any(|g| g == grant_type)
    }
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<i64>,
    jti: Option<String>,
}

/// The unverified claims of a JWT (to find whose keys verify it).
pub(crate) fn peek_claims<T: serde::de::DeserializeOwned>(token: &str) -> Option<T> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `client_id:secret` of an HTTP Basic header (RFC 6749 2.3.1: each part
/// form-urlencoded).
fn basic_credentials(req: &HttpRequest) -> Option<Result<(String, String), OAuthError>> {
    let h = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bad = || {
        let mut e = OAuthError::client("the Basic credentials are malformed");
        e.basic = true;
        e
    };
    let decoded = match base64::engine::general_purpose::STANDARD.decode(rest.trim()) {
        Ok(d) => d,
        Err(_) => return Some(Err(bad())),
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return Some(Err(bad()));
    };
    let Some((id, secret)) = text.split_once(':') else {
        return Some(Err(bad()));
    };
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some(Ok((dec(id), dec(secret))))
}

impl AuthService {
    /// Authenticates the client of a token, introspection or revocation request.
    /// A public client (only `client_id`) is accepted when `allow_public`.
    pub(crate) async fn authenticate_client(
        &self,
        req: &HttpRequest,
        form: &[(String, String)],
        allow_public: bool,
    ) -> Result<Client, OAuthError> {
        let basic = basic_credentials(req).transpose()?;
        let assertion = field(form, "client_assertion");
        let post_secret = field(form, "client_secret");
        let methods = [basic.is_some(), assertion.is_some(), post_secret.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if methods > 1 {
            return Err(OAuthError::request(
                "use one client authentication method, not several",
            ));
        }
        if let Some((id, secret)) = basic {
            if field(form, "client_id").is_some_and(|f| f != id) {
                return Err(OAuthError::request(
                    "client_id differs from the client of the Authorization header",
                ));
            }
            return self.by_secret(&id, &secret, true).await;
        }
        if let Some(secret) = post_secret {
            let id = field(form, "client_id")
                .ok_or_else(|| OAuthError::client("client_secret without client_id"))?;
            return self.by_secret(id, secret, false).await;
        }
        if let Some(a) = assertion {
            if field(form, "client_assertion_type") != Some(ASSERTION_TYPE) {
                return Err(OAuthError::client(format!(
                    "client_assertion_type must be {ASSERTION_TYPE}"
                )));
            }
            return self.by_assertion(a, field(form, "client_id")).await;
        }
        let id = field(form, "client_id")
            .ok_or_else(|| OAuthError::client("the request has no client authentication"))?;
        let client = self.load_client(id).await?;
        if !(allow_public && client.public) {
            return Err(OAuthError::client(
                "this client must authenticate (client secret or signed assertion)",
            ));
        }
        Ok(client)
    }

    pub(crate) async fn load_client(&self, id: &str) -> Result<Client, OAuthError> {
        if id.is_empty() || id.len() > 200 {
            return Err(OAuthError::client("unknown client"));
        }
        let id = id.to_string();
        let row = self
            .store
            .call(move |s| s.auth_client(&id))
            .await?
            .ok_or_else(|| OAuthError::client("unknown client"))?;
        Ok(Client::of(row))
    }

    async fn by_secret(&self, id: &str, secret: &str, basic: bool) -> Result<Client, OAuthError> {
        let fail = |d: &str| {
            let mut e = OAuthError::client(d);
            e.basic = basic;
            e
        };
        let client = self.load_client(id).await.map_err(|mut e| {
            e.basic = basic;
            e
        })?;
        match &client.row.secret_hash {
            Some(h) if client.row.auth_method == "client_secret" => {
                if same(h, &digest(secret)) {
                    Ok(client)
                } else {
                    Err(fail("the client secret is wrong"))
                }
            }
            _ => Err(fail("this client does not authenticate with a secret")),
        }
    }

    async fn by_assertion(
        &self,
        assertion: &str,
        form_id: Option<&str>,
    ) -> Result<Client, OAuthError> {
        if assertion.len() > 16 * 1024 {
            return Err(OAuthError::client("the client assertion is too large"));
        }
        let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
            OAuthError::client(format!(
                "the client assertion's header is not acceptable ({:?}); alg must be RS384 or ES384",
                e.kind()
            ))
        })?;
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(OAuthError::client(format!(
                "the client assertion's algorithm {:?} is not accepted (RS384, ES384)",
                header.alg
            )));
        }
        let peek: AssertionClaims = peek_claims(assertion)
            .ok_or_else(|| OAuthError::client("the client assertion's claims are not JSON"))?;
        let id = peek
            .iss
            .clone()
            .ok_or_else(|| OAuthError::client("the client assertion has no iss"))?;
        if peek.sub.as_deref() != Some(id.as_str()) {
            return Err(OAuthError::client(
                "the client assertion's sub must equal its iss (the client_id)",
            ));
        }
        if form_id.is_some_and(|f| f != id) {
            return Err(OAuthError::client(
                "client_id differs from the client assertion's iss",
            ));
        }
        let client = self.load_client(&id).await?;
        if client.row.auth_method != "private_key_jwt" {
            return Err(OAuthError::client(
                "this client does not authenticate with signed assertions",
            ));
        }
        let claims = self.verify_assertion(&client, assertion, &header).await?;
        let exp = claims.exp.unwrap_or(0);
        if exp > now() + ASSERTION_MAX_SECS + super::jwt::LEEWAY_SECS as i64 {
            return Err(OAuthError::client(
                "the client assertion's exp is more than 5 minutes ahead",
            ));
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| OAuthError::client("the client assertion has no usable jti"))?;
        let (cid, jti_c) = (id.clone(), jti.clone());
        let fresh = self
            .store
            .call(move |s| s.auth_remember_jti(&cid, &jti_c, exp))
            .await?;
        if !fresh {
            return Err(OAuthError::client(
                "the client assertion's jti was used before (replay)",
            ));
        }
        Ok(client)
    }

    /// Checks an assertion's signature with the client's keys (the JWK Set of a
    /// `jwks_uri` fetched again once when the `kid` is unknown), `aud` = the
    /// token endpoint, `iss` = `sub` = the client, `exp` with 5 s of leeway.
    async fn verify_assertion(
        &self,
        client: &Client,
        assertion: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<AssertionClaims, OAuthError> {
        let id = client.id().to_string();
        let mut v = Validation::new(header.alg);
        v.leeway = super::jwt::LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_audience(&[self.token_endpoint()]);
        v.set_issuer(&[&id]);
        v.sub = Some(id.clone());
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let try_set = |set: &JwkSet| -> Option<Result<AssertionClaims, OAuthError>> {
            let candidates: Vec<&Jwk> = match &header.kid {
                Some(kid) => set.find(kid).into_iter().collect(),
                None => set.keys.iter().collect(),
            };
            if candidates.is_empty() {
                return None;
            }
            let mut last = None;
            for jwk in candidates {
                if jwk
                    .common
                    .key_algorithm
                    .is_some_and(|a| format!("{a:?}") != format!("{:?}", header.alg))
                {
                    continue;
                }
                let Ok(key) = DecodingKey::from_jwk(jwk) else {
                    continue;
                };
                match jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &v) {
                    Ok(d) => return Some(Ok(d.claims)),
                    Err(e) => last = Some(e),
                }
            }
            Some(Err(OAuthError::client(match last {
                Some(e) => format!(
                    "the client assertion is not valid: {}",
                    super::jwt::JwtError::from_verification(e)
                ),
                None => "no key of the client fits the assertion's algorithm".into(),
            })))
        };
        if let Some(text) = &client.row.jwks {
            let set: JwkSet = serde_json::from_str(text)
                .map_err(|_| OAuthError::client("the client's registered JWK Set is unreadable"))?;
            return try_set(&set).unwrap_or_else(|| {
                Err(OAuthError::client(
                    "the client assertion's kid names no registered key",
                ))
            });
        }
        let uri = client
            .row
            .jwks_uri
            .clone()
            .ok_or_else(|| OAuthError::client("the client has no keys"))?;
        let set = self
            .keysets
            .get(&uri, false)
            .await
            .map_err(|e| OAuthError::client(format!("the client's JWK Set: {e}")))?;
        if let Some(r) = try_set(&set) {
            return r;
        }
        let set = self
            .keysets
            .get(&uri, true)
            .await
            .map_err(|e| OAuthError::client(format!("the client's JWK Set: {e}")))?;
        try_set(&set).unwrap_or_else(|| {
            Err(OAuthError::client(
                "the client assertion's kid is not in the client's JWK Set",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_must_be_absolute_and_without_fragment() {
        assert!(valid_redirect_uri("https://app.example/cb"));
        assert!(valid_redirect_uri("http://127.0.0.1:9000/cb?x=1"));
        assert!(valid_redirect_uri("com.example.app:/oauth"));
        assert!(!valid_redirect_uri("/cb"));
        assert!(!valid_redirect_uri("https://app.example/cb#frag"));
        assert!(!valid_redirect_uri("https:"));
        assert!(!valid_redirect_uri("https://a b"));
    }
}
