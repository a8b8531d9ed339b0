//! [`DatabaseUrl`]: `postgres://USER@HOST[:PORT]/DB[?sslmode=…&sslrootcert=FILE]` as given to
//! `init --database`, checked once, stored in the state dir, shown in messages — so it never
//! holds a password — and turned into the client's configuration at each connect: the password
//! from the environment ([`super::super::pgpass`]), the timeouts, and TLS.
//!
//! TLS follows libpq's parameters with one difference: Tether never encrypts without checking
//! who it talks to. `sslmode=verify-full` (and `require` / `verify-ca`, which mean the same
//! here) needs `sslrootcert=FILE`, the CA that signed the server's certificate, and verifies
//! the chain and the host name; `sslmode=disable` (the default, as before) is plain TCP for a
//! database on loopback or a private link. `prefer` and `allow`, which fall back to plaintext
//! without saying so, are refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{StoreError, CONNECT_TIMEOUT};

/// Server-side limits, so no statement, lock wait or half-done transaction outlives a few
/// seconds, and the server notices a vanished client as fast as the client notices it.
const SESSION_OPTIONS: &str = "-c statement_timeout=5000 -c lock_timeout=5000 \
    -c idle_in_transaction_session_timeout=5000 -c tcp_keepalives_idle=2 \
    -c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 -c tcp_user_timeout=3000";

/// A checked, password-free database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    /// As given (shown and stored).
    url: String,
    /// Without the TLS parameters, which are Tether's to apply: what the client parses.
    client: String,
    /// The CA to verify the server against; `None`: no TLS.
    root: Option<PathBuf>,
}

impl DatabaseUrl {
    /// Parses a database URL. A password in it is refused (the URL is written to the state dir
    /// and appears in messages); the error never repeats it.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::BadUrl(why.to_string());
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("a database URL starts with postgres://"));
        }
        let (client, root) = split_tls(url)?;
        let config: tokio_postgres::Config = client
            .parse()
            .map_err(|_| bad("not a valid postgres://USER@HOST[:PORT]/DB URL"))?;
        if config.get_password().is_some() {
            return Err(bad(
                "the URL holds a password; put it in PGPASSWORD or a passfile (~/.pgpass) \
                 instead, so it is never stored or shown",
            ));
        }
        if config.get_user().is_none() || config.get_hosts().is_empty() {
            return Err(bad(
                "the URL needs a user and a host: postgres://USER@HOST/DB",
            ));
        }
        Ok(DatabaseUrl {
            url: url.to_string(),
            client,
            root,
        })
    }

    /// The URL as given (it holds no password).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The client configuration — the URL, the password from the environment, the timeouts,
    /// TLS required or off — and a note on a passfile that was ignored, for the error if the
    /// connection then fails.
    pub(super) fn client_config(&self) -> (tokio_postgres::Config, Option<String>) {
        // Parsed once already by `parse`, which is the only way to make a `DatabaseUrl`.
        let mut c: tokio_postgres::Config =
            self.client.parse().expect("checked by DatabaseUrl::parse");
        let note = match super::super::pgpass::password(&c) {
            Ok(Some(pw)) => {
                c.password(pw);
                None
            }
            Ok(None) => None,
            Err(note) => Some(note),
        };
        c.application_name("tether-ca")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(2))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(2)
            .tcp_user_timeout(Duration::from_secs(3))
            .options(SESSION_OPTIONS)
            .ssl_mode(if self.root.is_some() {
                SslMode::Require
            } else {
                SslMode::Disable
            });
        (c, note)
    }

    /// The TLS connector: verifying against `sslrootcert`, read at each connect so a renewed
    /// CA file is picked up by the next reconnect; unused when TLS is off.
    pub(super) fn tls(&self) -> Result<MakeRustlsConnect, String> {
        let roots = match &self.root {
            Some(path) => std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| tether_certs::pem::root_store(&pem).map_err(|e| e.to_string()))
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?,
            None => rustls::RootCertStore::empty(),
        };
        let config = rustls::ClientConfig::builder_with_provider(tether_certs::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(Arc::new(roots))
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// `url` without its `sslmode` and `sslrootcert` parameters, and the root they ask TLS to
/// verify against (`None`: no TLS).
fn split_tls(url: &str) -> Result<(String, Option<PathBuf>), StoreError> {
    let bad = |why: String| StoreError::BadUrl(why);
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let (mut mode, mut root, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", m)) => mode = Some(m.to_string()),
            Some(("sslrootcert", r)) => root = Some(PathBuf::from(r)),
            _ => rest.push(pair),
        }
    }
    let tls = match mode.as_deref() {
        None | Some("disable") => false,
        Some("require" | "verify-ca" | "verify-full") => true,
        Some(m @ ("prefer" | "allow")) => {
            return Err(bad(format!(
                "sslmode={m} may fall back to plaintext without saying so; use \
                 sslmode=verify-full&sslrootcert=FILE, or sslmode=disable"
            )))
        }
        Some(m) => return Err(bad(format!("sslmode={m} is not a TLS mode"))),
    };
    let root = match (tls, root) {
        (true, Some(r)) if r.is_absolute() => Some(r),
        (true, Some(_)) => return Err(bad("sslrootcert must be an absolute path".into())),
        (true, None) => {
            return Err(bad(
                "TLS needs sslrootcert=FILE, the CA that signed the server's certificate \
                 (Tether always verifies the server)"
                    .into(),
            ))
        }
        (false, Some(_)) => {
            return Err(bad(
                "sslrootcert without sslmode=verify-full: say which you mean".into(),
            ))
        }
        (false, None) => None,
    };
    let client = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((client, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_refused_without_repeating_it() {
        let e = DatabaseUrl::parse("postgres://ca:hunter2@db.example:5432/tether").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("PGPASSWORD"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn urls_need_the_postgres_scheme_a_user_and_a_host() {
        for bad in [
            "mysql://a@b/c",
            "postgres://",
            "postgres:///db",
            "not a url",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
        let ok = DatabaseUrl::parse("postgres://ca@db.example:5433/tether").unwrap();
        assert_eq!(ok.as_str(), "postgres://ca@db.example:5433/tether");
        assert_eq!(ok.root, None);
    }

    #[test]
    fn tls_always_verifies_and_never_falls_back() {
        let base = "postgres://ca@db.example/tether";
        let ok = DatabaseUrl::parse(&format!(
            "{base}?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3"
        ))
        .unwrap();
        assert_eq!(
            ok.root.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(ok.client, format!("{base}?connect_timeout=3"));
        for (query, why) in [
            ("sslmode=require", "sslrootcert"),
            ("sslmode=prefer", "plaintext"),
            ("sslmode=allow", "plaintext"),
            ("sslmode=bogus", "not a TLS mode"),
            ("sslrootcert=/etc/ca.pem", "without sslmode"),
            ("sslmode=verify-full&sslrootcert=ca.pem", "absolute"),
        ] {
            let e = DatabaseUrl::parse(&format!("{base}?{query}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{query}: {e}");
        }
        assert_eq!(
            DatabaseUrl::parse(&format!("{base}?sslmode=disable"))
                .unwrap()
                .root,
            None
        );
    }
}
