//! The cluster's signing keys: where they come from ([`JwksSource`]: a file, or an `https://`
//! URL such as the apiserver's `/openid/v1/jwks`), the last good set ([`Jwks`]) and refreshing
//! it.
//!
//! Failure semantics: a refresh that fails (unreadable, unreachable, not 200, too large, not a
//! JWKS, no usable key) keeps the last good set and logs a warning. A file must load at startup
//! (the CA refuses to start otherwise); a URL need not — the CA starts without keys, answers
//! Kubernetes enrollments 503 and keeps retrying. A token whose `kid` is not in the set triggers
//! one refresh, at most one per [`MIN_REFRESH_GAP`] whatever the callers send.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::RootCertStore;
use tokio::time::Instant;

use super::fetch::{https_get, MAX_JWKS_BYTES};
use super::SetupError;

/// The least time between two refreshes a token can trigger: a flood of made-up key ids costs
/// the apiserver at most one request a second.
pub(crate) const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);

/// Where the JWKS is read from (`--k8s-jwks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A file (e.g. a ConfigMap holding `kubectl get --raw /openid/v1/jwks`), re-read on every
    /// refresh.
    File(PathBuf),
    /// An `https://` URL, its server verified against `ca_file` (`--k8s-jwks-ca`), with the
    /// token in `token_file` (re-read at every fetch) as a bearer when given.
    Url {
        /// The URL.
        uri: Uri,
        /// PEM roots for the server.
        ca_file: PathBuf,
        /// `--k8s-jwks-token-file`.
        token_file: Option<PathBuf>,
    },
}

impl JwksSource {
    /// `--k8s-jwks` as given: `https://…` is a URL, any other `scheme://` is refused (`http://`
    /// would let anyone on the path swap the keys), everything else is a file path.
    pub fn parse(
        value: &str,
        ca_file: Option<PathBuf>,
        token_file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let Some((scheme, _)) = value.split_once("://") else {
            if ca_file.is_some() || token_file.is_some() {
                return Err(
                    "--k8s-jwks-ca and --k8s-jwks-token-file only go with an https:// \
                            --k8s-jwks"
                        .into(),
                );
            }
            return Ok(JwksSource::File(PathBuf::from(value)));
        };
        if scheme != "https" {
            return Err(format!(
                "--k8s-jwks {value}: only https:// URLs (or a file) are accepted; a JWKS over \
                 {scheme}:// could be swapped by anyone on the path"
            ));
        }
        let uri: Uri = value
            .parse()
            .map_err(|e| format!("--k8s-jwks {value}: {e}"))?;
        if uri.host().is_none_or(str::is_empty) || value.contains('@') {
            return Err(format!(
                "--k8s-jwks {value}: give https://HOST[:PORT]/PATH (no user info)"
            ));
        }
        let ca_file = ca_file.ok_or_else(|| {
            format!(
                "--k8s-jwks {value} needs --k8s-jwks-ca (in a pod: \
                 /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)"
            )
        })?;
        Ok(JwksSource::Url {
            uri,
            ca_file,
            token_file,
        })
    }

    /// The file or URL, for logs.
    pub fn describe(&self) -> String {
        match self {
            JwksSource::File(path) => path.display().to_string(),
            JwksSource::Url { uri, .. } => uri.to_string(),
        }
    }
}

/// One usable key: the only algorithm it verifies, and the key.
#[derive(Clone)]
pub(super) struct Key {
    /// RS256 for an RSA key, ES256 for a P-256 key.
    pub(super) alg: Algorithm,
    /// The key.
    pub(super) key: DecodingKey,
}

/// What a key id finds.
pub(super) enum Lookup {
    /// The key.
    Found(Key),
    /// No key has that id (after a refresh, when one was due).
    Unknown,
    /// No set has loaded yet.
    NotLoaded,
}

/// The last good key set and how to refresh it.
pub(super) struct Jwks {
    /// Where it comes from.
    source: JwksSource,
    /// The roots for a URL source, read once at startup.
    roots: Option<Arc<RootCertStore>>,
    /// The last good set by key id; `None` until one loads.
    keys: RwLock<Option<Arc<HashMap<String, Key>>>>,
    /// When the last refresh ended; held during a refresh, so refreshes never overlap.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// Reads the roots of a URL source and loads the first set: a file must load (else
    /// [`SetupError`]); a URL that fails is logged and retried later.
    pub(super) async fn open(source: JwksSource) -> Result<Self, SetupError> {
        let roots = match &source {
            JwksSource::File(_) => None,
            JwksSource::Url { ca_file, .. } => Some(Arc::new(read_roots(ca_file)?)),
        };
        let jwks = Jwks {
            source,
            roots,
            keys: RwLock::new(None),
            last_attempt: tokio::sync::Mutex::new(None),
        };
        if let Err(e) = jwks.refresh().await {
            match &jwks.source {
                JwksSource::File(path) => {
                    return Err(SetupError(format!("--k8s-jwks {}: {e}", path.display())))
                }
                JwksSource::Url { uri, .. } => tracing::warn!(
                    "fetching the Kubernetes JWKS from {uri} failed ({e}); Kubernetes \
                     enrollments are answered 503 until it loads, retrying"
                ),
            }
        }
        Ok(jwks)
    }

    /// Whether a set has loaded.
    pub(super) fn loaded(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The key `kid`; one that is missing triggers a refresh first if none ran in the last
    /// [`MIN_REFRESH_GAP`].
    pub(super) async fn key(&self, kid: &str) -> Lookup {
        if let Some(key) = self.find(kid) {
            return Lookup::Found(key);
        }
        self.refresh_if_due().await;
        match self.find(kid) {
            Some(key) => Lookup::Found(key),
            None if self.loaded() => Lookup::Unknown,
            None => Lookup::NotLoaded,
        }
    }

    /// The key `kid` in the current set, if one loaded and has it.
    fn find(&self, kid: &str) -> Option<Key> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.as_ref().and_then(|set| set.get(kid).cloned())
    }

    /// Refreshes unless one ended less than [`MIN_REFRESH_GAP`] ago (then the caller gets the
    /// set as it is). Measured from the end, so callers that queued behind a slow fetch (an
    /// apiserver timing out) take its result instead of each fetching again in turn.
    async fn refresh_if_due(&self) {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFRESH_GAP) {
            return;
        }
        let loaded = self.load().await;
        *last = Some(Instant::now());
        if let Err(e) = loaded {
            tracing::warn!(
                "refreshing the Kubernetes JWKS from {}: {e}; keeping the last good set",
                self.source.describe()
            );
        }
    }

    /// Loads the set now (the periodic refresh and startup), whatever the gap; on failure the
    /// last good set stays and the error says why.
    pub(super) async fn refresh(&self) -> Result<(), String> {
        let mut last = self.last_attempt.lock().await;
        let loaded = self.load().await;
        *last = Some(Instant::now());
        loaded
    }

    /// Reads, parses and installs the set (the caller holds `last_attempt`).
    async fn load(&self) -> Result<(), String> {
        let bytes = match &self.source {
            JwksSource::File(path) => read_limited(path)?,
            JwksSource::Url {
                uri, token_file, ..
            } => {
                let bearer = token_file.as_deref().map(read_token).transpose()?;
                let roots = self.roots.clone().ok_or("no roots for the JWKS server")?;
                https_get(uri, roots, bearer).await?.to_vec()
            }
        };
        let set = parse_set(&bytes)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(set));
        Ok(())
    }
}

/// The usable keys of a JWKS document by key id: RSA keys (RS256) and P-256 keys (ES256), each
/// with a `kid`; any other key is skipped. A document with no usable key is an error, so a
/// broken publication cannot replace a good set with an empty one.
pub(super) fn parse_set(bytes: &[u8]) -> Result<HashMap<String, Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let declared = jwk.common.key_algorithm;
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        let matches = match declared {
            None => true,
            Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
            Some(_) => false,
        };
        if !matches {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid, Key { alg, key });
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no RS256 or ES256 key with a kid".into());
    }
    Ok(keys)
}

/// `path`, at most [`MAX_JWKS_BYTES`].
fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    // A small local file read at most once a second: not worth a blocking-pool hop.
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "{} is larger than {MAX_JWKS_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The bearer token in `path`, trimmed (the kubelet rotates the file, so it is read each time).
fn read_token(path: &Path) -> Result<String, String> {
    let text = read_limited(path)?;
    let token = String::from_utf8(text)
        .map_err(|_| format!("{} is not text", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(format!("the bearer token file {} is empty", path.display()));
    }
    Ok(token)
}

/// The PEM certificates in `path` as the roots that verify the JWKS server.
fn read_roots(path: &Path) -> Result<RootCertStore, SetupError> {
    let bad = |why: String| SetupError(format!("--k8s-jwks-ca {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    tether_certs::pem::root_store(&pem).map_err(|e| bad(e.to_string()))
}
