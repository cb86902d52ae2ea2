//! Master key, data keys and the sealed-box format `nonce(12) || ciphertext || tag(16)`.

use std::fs;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use sha2::Sha256;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// What the key check encrypts: lets start-up tell a wrong master key from a right one.
const CHECK_PLAINTEXT: &[u8] = b"fhirgate master key check v1";
const CHECK_AAD: &[u8] = b"fhirgate:kek-check";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the master key must be 32 bytes written as base64 or hex ({0})")]
    BadMasterKey(String),
    #[error("master key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the master key does not open this database's data keys: it is not the key this database was created with")]
    WrongMasterKey,
    #[error("a ciphertext failed authentication: it was altered or moved from another row ({0})")]
    Tampered(String),
    #[error("no data key {0} in this database")]
    UnknownDataKey(i64),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// The key-encryption key. Never logged; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Result<MasterKey, KeyError> {
        let mut k = [0u8; KEY_LEN];
        openssl::rand::rand_bytes(&mut k)?;
        Ok(MasterKey(k))
    }

    /// From base64 (standard or URL-safe) or hex text.
    pub fn parse(text: &str) -> Result<MasterKey, KeyError> {
        let t = text.trim();
        let bytes = if t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| KeyError::BadMasterKey(e.to_string()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
                .map_err(|e| KeyError::BadMasterKey(e.to_string()))?
        };
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::BadMasterKey(format!("got {} bytes", b.len())))?;
        Ok(MasterKey(arr))
    }

    pub fn read_file(path: &Path) -> Result<MasterKey, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        MasterKey::parse(&text)
    }

    /// Writes the key as base64 to a new file readable by its owner only (0600).
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let err = |source| KeyError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(err)?;
        f.write_all(self.encoded().as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)
    }

    pub fn encoded(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// A sealed constant that proves, at start-up, that this is the database's key.
    pub fn key_check(&self) -> Result<Vec<u8>, KeyError> {
        seal(&self.0, CHECK_PLAINTEXT, CHECK_AAD)
    }

    pub fn verify(&self, check: &[u8]) -> Result<(), KeyError> {
        match open(&self.0, check, CHECK_AAD) {
            Ok(p) if p == CHECK_PLAINTEXT => Ok(()),
            _ => Err(KeyError::WrongMasterKey),
        }
    }

    fn wrap(&self, key_id: i64, dek: &[u8; KEY_LEN]) -> Result<Vec<u8>, KeyError> {
        seal(&self.0, dek, format!("fhirgate:dek:{key_id}").as_bytes())
    }

    fn unwrap(&self, key_id: i64, wrapped: &[u8]) -> Result<[u8; KEY_LEN], KeyError> {
        let raw = open(
            &self.0,
            wrapped,
            format!("fhirgate:dek:{key_id}").as_bytes(),
        )
        .map_err(|_| KeyError::WrongMasterKey)?;
        raw.try_into().map_err(|_| KeyError::WrongMasterKey)
    }
}

/// A data key in clear, in memory only.
#[derive(Clone)]
pub struct DataKey {
    pub id: i64,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id)
    }
}

/// A data key as stored: wrapped by the master key.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub id: i64,
    pub wrapped: Vec<u8>,
}

/// The data keys of a database, unwrapped; the newest one seals new rows. The
/// index key (a data key of its own) makes the blind index values.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<DataKey>,
    index: Option<DataKey>,
    /// HMAC-SHA-256 keyed with the index key once; each blind value clones the keyed
    /// state instead of setting up the key again (hundreds of values per write).
    index_mac: Option<Hmac<Sha256>>,
    /// Seals page cursors: derived from the index key, so every node has it.
    cursor_key: Option<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys)
            .field("index", &self.index)
            .finish()
    }
}

impl Keyring {
    /// Unwraps every stored data key with the master key.
    pub fn open(master: &MasterKey, wrapped: &[WrappedKey]) -> Result<Keyring, KeyError> {
        let mut keys = Vec::with_capacity(wrapped.len());
        for w in wrapped {
            keys.push(DataKey {
                id: w.id,
                key: master.unwrap(w.id, &w.wrapped)?,
            });
        }
        keys.sort_by_key(|k| k.id);
        Ok(Keyring {
            keys,
            index: None,
            index_mac: None,
            cursor_key: None,
        })
    }

    /// Adds the index key (stored wrapped like the data keys).
    pub fn with_index_key(
        mut self,
        master: &MasterKey,
        wrapped: &WrappedKey,
    ) -> Result<Keyring, KeyError> {
        let key = master.unwrap(wrapped.id, &wrapped.wrapped)?;
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .map_err(|e| KeyError::BadMasterKey(e.to_string()))?;
        let mut derive = mac.clone();
        derive.update(b"fhirgate:cursor-key");
        let cursor: [u8; KEY_LEN] = derive.finalize().into_bytes().into();
        self.index = Some(DataKey {
            id: wrapped.id,
            key,
        });
        self.index_mac = Some(mac);
        self.cursor_key = Some(cursor);
        Ok(self)
    }

    /// A blind index value: HMAC-SHA-256 of `text` under the index key.
    pub fn blind(&self, text: &str) -> Result<Vec<u8>, KeyError> {
        let mut mac = self.index_mac.clone().ok_or(KeyError::UnknownDataKey(0))?;
        mac.update(text.as_bytes());
        Ok(mac.finalize().into_bytes().to_vec())
    }

    /// The blind index value truncated to 64 bits, as the index tables hold it
    /// (collisions are 2^-64 per pair, and matches are verified after decryption
    /// wherever a false match could change an answer).
    pub fn blind64(&self, text: &str) -> Result<i64, KeyError> {
        let mut mac = self.index_mac.clone().ok_or(KeyError::UnknownDataKey(0))?;
        mac.update(text.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        Ok(i64::from_be_bytes(first))
    }

    /// A secret derived from the index key for `label` (a subscription's HMAC
    /// key): 32 bytes, base64url. The label is domain-separated from every blind
    /// index value, so a secret never equals an index value and reveals nothing
    /// of the key.
    pub fn derive_secret(&self, label: &str) -> Result<String, KeyError> {
        let mut mac = self.index_mac.clone().ok_or(KeyError::UnknownDataKey(0))?;
        mac.update(b"fhirgate:derived-secret\0");
        mac.update(label.as_bytes());
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Seals a page cursor (it may hold values of the query and sort keys).
    pub fn seal_cursor(&self, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let k = self
            .cursor_key
            .as_ref()
            .ok_or(KeyError::UnknownDataKey(0))?;
        seal(k, plaintext, b"fhirgate:cursor")
    }

    /// Opens a page cursor; None when it was not sealed by this database's key.
    pub fn open_cursor(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let k = self.cursor_key.as_ref()?;
        open(k, sealed, b"fhirgate:cursor").ok()
    }

    /// A fresh data key with the given id, wrapped for storage.
    pub fn new_data_key(master: &MasterKey, id: i64) -> Result<WrappedKey, KeyError> {
        let mut k = [0u8; KEY_LEN];
        openssl::rand::rand_bytes(&mut k)?;
        Ok(WrappedKey {
            id,
            wrapped: master.wrap(id, &k)?,
        })
    }

    /// Re-wraps every data key (and the index key) under a new master key.
    pub fn rewrap(&self, new_master: &MasterKey) -> Result<Vec<WrappedKey>, KeyError> {
        self.keys
            .iter()
            .chain(self.index.iter())
            .map(|k| {
                Ok(WrappedKey {
                    id: k.id,
                    wrapped: new_master.wrap(k.id, &k.key)?,
                })
            })
            .collect()
    }

    /// The key that seals new rows.
    pub fn active(&self) -> Option<&DataKey> {
        self.keys.last()
    }

    pub fn ids(&self) -> Vec<i64> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// Seals with the active key; returns (key id, sealed box).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<(i64, Vec<u8>), KeyError> {
        let k = self.active().ok_or(KeyError::UnknownDataKey(0))?;
        Ok((k.id, seal(&k.key, plaintext, aad)?))
    }

    pub fn open_box(&self, key_id: i64, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let k = self
            .keys
            .iter()
            .rev()
            .find(|k| k.id == key_id)
            .ok_or(KeyError::UnknownDataKey(key_id))?;
        open(&k.key, sealed, aad)
            .map_err(|_| KeyError::Tampered(String::from_utf8_lossy(aad).into_owned()))
    }
}

fn seal(key: &[u8; KEY_LEN], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    openssl::rand::rand_bytes(&mut nonce)?;
    let mut tag = [0u8; TAG_LEN];
    let ct = encrypt_aead(
        Cipher::aes_256_gcm(),
        key,
        Some(&nonce),
        aad,
        plaintext,
        &mut tag,
    )?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    Ok(out)
}

fn open(key: &[u8; KEY_LEN], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(KeyError::Tampered("too short".into()));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    Ok(decrypt_aead(
        Cipher::aes_256_gcm(),
        key,
        Some(nonce),
        aad,
        ct,
        tag,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_body_opens_only_with_its_key_and_row() {
        let master = MasterKey::generate().unwrap();
        let w = Keyring::new_data_key(&master, 1).unwrap();
        let ring = Keyring::open(&master, &[w]).unwrap();
        let (id, sealed) = ring
            .seal(b"{\"name\":\"Chalmers\"}", b"Patient/1/1")
            .unwrap();
        assert_eq!(
            ring.open_box(id, &sealed, b"Patient/1/1").unwrap(),
            b"{\"name\":\"Chalmers\"}"
        );
        assert!(
            ring.open_box(id, &sealed, b"Patient/2/1").is_err(),
            "moved to another row"
        );
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(
            ring.open_box(id, &flipped, b"Patient/1/1").is_err(),
            "altered"
        );
        assert!(!sealed.windows(8).any(|w| w == b"Chalmers"));
    }

    #[test]
    fn rotation_rewraps_keys_and_a_wrong_master_is_refused() {
        let old = MasterKey::generate().unwrap();
        let ring = Keyring::open(&old, &[Keyring::new_data_key(&old, 1).unwrap()]).unwrap();
        let (id, sealed) = ring.seal(b"x", b"a").unwrap();
        let new = MasterKey::generate().unwrap();
        let rewrapped = ring.rewrap(&new).unwrap();
        let ring2 = Keyring::open(&new, &rewrapped).unwrap();
        assert_eq!(ring2.open_box(id, &sealed, b"a").unwrap(), b"x");
        assert!(matches!(
            Keyring::open(&old, &rewrapped),
            Err(KeyError::WrongMasterKey)
        ));
        assert!(new.verify(&old.key_check().unwrap()).is_err());
        assert!(old.verify(&old.key_check().unwrap()).is_ok());
    }

    #[test]
    fn master_keys_parse_from_base64_and_hex() {
        let k = MasterKey::generate().unwrap();
        assert!(MasterKey::parse(&k.encoded()).is_ok());
        assert!(MasterKey::parse(&hex::encode([7u8; 32])).is_ok());
        assert!(MasterKey::parse("short").is_err());
        assert!(format!("{k:?}") == "MasterKey(..)");
    }
}
