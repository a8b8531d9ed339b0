//! One validating function per section of the config file: raw strings in, typed values out,
//! or a [`ConfigError`] naming the file, the dotted key and the problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_certs::SpiffeId;

use crate::policy::PathParams;

use super::raw::{RawAccessLog, RawCa, RawIdentity, RawInbound, RawLimits, RawService};
use super::{
    AccessLogTarget, CaSettings, ConfigError, CrlPolicy, Enrollment, IdentityFiles, IdentitySource,
    Inbound, Limits, Mode, PeerAddr, Service, DEFAULT_CRL_GRACE,
};

/// The smallest `limits.max_header_bytes`: hyper's HTTP/1.1 read buffer cannot be smaller (it
/// panics on a `max_buf_size` below 8 KiB), so a smaller value is refused rather than raised.
pub(super) const MIN_HEADER_BYTES: usize = 8192;

/// What every section needs: the file's name for errors and its folder for relative paths.
pub(super) struct Context<'a> {
    /// The config file as named in errors.
    pub(super) file: &'a str,
    /// Relative paths are joined to this folder (the file's own).
    pub(super) base: &'a Path,
}

impl Context<'_> {
    /// An error at `key` of this file.
    pub(super) fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    /// `p` as written if absolute, else relative to the file's folder.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// An `IP:port` address.
    pub(super) fn addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse()
            .map_err(|_| self.err(key, format!("{s:?} is not an IP:port address")))
    }

    /// A peer address: `IP:port`, or `host:port` with a DNS name (see [`PeerAddr`]).
    fn peer_addr(&self, key: &str, s: &str) -> Result<PeerAddr, ConfigError> {
        if let Ok(a) = s.parse() {
            return Ok(PeerAddr::Ip(a));
        }
        let bad = || self.err(key, format!("{s:?} is not an IP:port or host:port address"));
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || !is_dns_name(host) {
            return Err(bad());
        }
        Ok(PeerAddr::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// A human duration (`"10s"`, `"5m"`), or `default` when the key is absent.
    fn duration(
        &self,
        key: &str,
        s: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match s {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| self.err(key, format!("{s:?}: {e} (e.g. \"10s\", \"5m\")"))),
        }
    }
}

/// `workers`: at least 1; absent means one per core.
pub(super) fn workers(ctx: &Context<'_>, workers: Option<usize>) -> Result<usize, ConfigError> {
    match workers {
        Some(0) => Err(ctx.err("workers", "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)),
    }
}

/// `[identity]` or `[ca]`: exactly one of them, with its stale-CRL settings.
pub(super) fn identity(
    ctx: &Context<'_>,
    files: Option<RawIdentity>,
    ca: Option<RawCa>,
) -> Result<(IdentitySource, CrlPolicy), ConfigError> {
    match (files, ca) {
        (Some(_), Some(_)) => Err(ctx.err(
            "[identity] / [ca]",
            "configure one identity source, not both",
        )),
        (None, None) => Err(ctx.err(
            "[identity] / [ca]",
            "missing: certificates from files ([identity]) or from the CA ([ca])",
        )),
        (Some(i), None) => {
            let source = IdentitySource::Files(IdentityFiles {
                cert: ctx.path(&i.cert),
                key: ctx.path(&i.key),
                bundle: ctx.path(&i.bundle),
                crl: i.crl.as_deref().map(|p| ctx.path(p)),
            });
            let grace = ctx.duration(
                "identity.crl_grace",
                i.crl_grace.as_deref(),
                DEFAULT_CRL_GRACE,
            )?;
            let on_stale = i.on_stale_crl.unwrap_or_default();
            Ok((source, CrlPolicy { on_stale, grace }))
        }
        (None, Some(c)) => {
            let urls = ca_urls(ctx, &c.urls)?;
            let grace = ctx.duration("ca.crl_grace", c.crl_grace.as_deref(), DEFAULT_CRL_GRACE)?;
            let on_stale = c.on_stale_crl.unwrap_or_default();
            let source = IdentitySource::Ca(CaSettings {
                urls,
                bundle: ctx.path(&c.bundle),
                enrollment: enrollment(ctx, &c)?,
                state_dir: ctx.path(&c.state_dir),
            });
            Ok((source, CrlPolicy { on_stale, grace }))
        }
    }
}

/// `ca.token_file`, `ca.k8s_token_file` and the `TETHER_PROXY_TOKEN` override: at most one
/// kind of credential. A Kubernetes token with a one-time token is refused rather than one
/// silently preferred, because which identity the sidecar enrolls as would then depend on a
/// precedence rule the operator may not know. The override beats `token_file` (both one-time
/// tokens), as it always has.
fn enrollment(ctx: &Context<'_>, c: &RawCa) -> Result<Option<Enrollment>, ConfigError> {
    let path = |key: &str, p: &str| {
        if p.trim().is_empty() {
            Err(ctx.err(key, "is empty: give the token file's path"))
        } else {
            Ok(ctx.path(p))
        }
    };
    match (&c.token, &c.token_file, &c.k8s_token_file) {
        (Some(_), _, Some(_)) => {
            let (flag, env) = super::overrides::flag_of("token");
            Err(ctx.err(
                "ca.k8s_token_file",
                format!(
                    "conflicts with the one-time token set by {flag} / {env}: a sidecar enrolls \
                     with one credential; drop one of them"
                ),
            ))
        }
        (None, Some(_), Some(_)) => Err(ctx.err(
            "ca.token_file / ca.k8s_token_file",
            "give one: token_file holds a one-time token from `tether-ca enroll`, \
             k8s_token_file a Kubernetes service-account token",
        )),
        (None, None, Some(p)) => Ok(Some(Enrollment::K8sTokenFile(path(
            "ca.k8s_token_file",
            p,
        )?))),
        (Some(t), _, None) => Ok(Some(Enrollment::Token(t.clone()))),
        (None, Some(p), None) => Ok(Some(Enrollment::TokenFile(path("ca.token_file", p)?))),
        (None, None, None) => Ok(None),
    }
}

/// `ca.urls`: at least one, each an `https://host[:port]` URL.
fn ca_urls(ctx: &Context<'_>, urls: &[String]) -> Result<Vec<http::Uri>, ConfigError> {
    if urls.is_empty() {
        return Err(ctx.err("ca.urls", "needs at least one https:// URL"));
    }
    urls.iter()
        .enumerate()
        .map(|(i, u)| {
            let key = format!("ca.urls[{i}]");
            let uri: http::Uri = u
                .parse()
                .map_err(|_| ctx.err(&key, format!("{u:?} is not a URL")))?;
            if uri.scheme_str() != Some("https") || uri.host().is_none() {
                return Err(ctx.err(&key, format!("{u:?} must be an https://host:port URL")));
            }
            Ok(uri)
        })
        .collect()
}

/// `[inbound]`.
pub(super) fn inbound(ctx: &Context<'_>, i: RawInbound) -> Result<Inbound, ConfigError> {
    let path_params = match (i.mode, i.path_params.as_deref()) {
        (_, None) => PathParams::default(),
        (Mode::Tcp, Some(_)) => {
            return Err(ctx.err(
                "inbound.path_params",
                "only an HTTP inbound has request paths; a TCP inbound carries bytes",
            ))
        }
        (Mode::Http, Some(s)) => s
            .parse()
            .map_err(|problem| ctx.err("inbound.path_params", problem))?,
    };
    Ok(Inbound {
        listen: ctx.addr("inbound.listen", &i.listen)?,
        app: ctx.addr("inbound.app", &i.app)?,
        policy: ctx.path(&i.policy),
        mode: i.mode,
        app_protocol: i.app_protocol,
        path_params,
    })
}

/// Every `[services.NAME]`, in name order.
pub(super) fn services(
    ctx: &Context<'_>,
    services: &BTreeMap<String, RawService>,
) -> Result<Vec<Service>, ConfigError> {
    services
        .iter()
        .map(|(name, s)| service(ctx, name, s))
        .collect()
}

/// One `[services.NAME]`: a host name, its peers' addresses and identity, and for TCP its own
/// listener.
fn service(ctx: &Context<'_>, name: &str, s: &RawService) -> Result<Service, ConfigError> {
    let key = |k: &str| format!("services.{name}.{k}");
    let host_name = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
    if name.is_empty() || !name.bytes().all(host_name) {
        return Err(ctx.err(
            &format!("services.{name}"),
            "a service name is a host name: letters, digits, '-', '_', '.'",
        ));
    }
    if s.address.is_empty() {
        return Err(ctx.err(&key("address"), "needs at least one address"));
    }
    let addresses = s
        .address
        .iter()
        .enumerate()
        .map(|(i, a)| ctx.peer_addr(&key(&format!("address[{i}]")), a))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = SpiffeId::parse(&s.identity).map_err(|e| {
        let problem = format!("{:?} is not a valid SPIFFE ID: {e}", s.identity);
        ctx.err(&key("identity"), problem)
    })?;
    let listen = match (s.mode, &s.listen) {
        (Mode::Tcp, Some(l)) => Some(ctx.addr(&key("listen"), l)?),
        (Mode::Tcp, None) => {
            return Err(ctx.err(&key("listen"), "a TCP service needs its own local listener"))
        }
        (Mode::Http, Some(_)) => {
            return Err(ctx.err(
                &key("listen"),
                "only TCP services have a listener; HTTP services are routed by Host on the \
                 outbound listener",
            ))
        }
        (Mode::Http, None) => None,
    };
    if s.mode == Mode::Tcp && s.peer_protocol.is_some() {
        return Err(ctx.err(
            &key("peer_protocol"),
            "only HTTP services have a peer protocol; a TCP service carries bytes",
        ));
    }
    Ok(Service {
        name: name.to_ascii_lowercase(),
        addresses,
        identity,
        mode: s.mode,
        listen,
        peer_protocol: s.peer_protocol.unwrap_or_default(),
    })
}

/// A DNS name (RFC 1123 host name): dot-separated labels of letters, digits and inner '-', each
/// 1–63 bytes, 253 in all, not all digits (that would be a mistyped IPv4 address).
fn is_dns_name(host: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (1..=253).contains(&host.len())
        && host.split('.').all(label_ok)
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// `[limits]`: each key optional, with the defaults of [`Limits::default`].
pub(super) fn limits(ctx: &Context<'_>, l: &RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let timeout = |key: &str, value: &Option<String>, default: Duration| {
        ctx.duration(&format!("limits.{key}"), value.as_deref(), default)
    };
    Ok(Limits {
        handshake_timeout: timeout(
            "handshake_timeout",
            &l.handshake_timeout,
            d.handshake_timeout,
        )?,
        header_read_timeout: timeout(
            "header_read_timeout",
            &l.header_read_timeout,
            d.header_read_timeout,
        )?,
        max_header_bytes: match l.max_header_bytes {
            Some(n) if n < MIN_HEADER_BYTES => {
                return Err(ctx.err(
                    "limits.max_header_bytes",
                    format!(
                        "{n} is too small: the minimum is {MIN_HEADER_BYTES} (8 KiB, the \
                         smallest HTTP/1.1 read buffer hyper allows)"
                    ),
                ))
            }
            Some(n) => n,
            None => d.max_header_bytes,
        },
        max_connections: match l.max_connections {
            Some(0) => return Err(ctx.err("limits.max_connections", "must be at least 1")),
            Some(n) => n,
            None => d.max_connections,
        },
        idle_timeout: timeout("idle_timeout", &l.idle_timeout, d.idle_timeout)?,
        request_timeout: timeout("request_timeout", &l.request_timeout, d.request_timeout)?,
        drain_timeout: timeout("drain_timeout", &l.drain_timeout, d.drain_timeout)?,
    })
}

/// `[access_log]`: `path` is a file (relative to the config's folder) or `"-"` for stdout.
pub(super) fn access_log(
    ctx: &Context<'_>,
    a: RawAccessLog,
) -> Result<AccessLogTarget, ConfigError> {
    const KEY: &str = "access_log.path";
    match a.path {
        None => Err(ctx.err(KEY, "missing: a file, or \"-\" for stdout")),
        Some(toml::Value::String(p)) if p == "-" => Ok(AccessLogTarget::Stdout),
        Some(toml::Value::String(p)) if p.trim().is_empty() => {
            Err(ctx.err(KEY, "is empty: give a file, or \"-\" for stdout"))
        }
        Some(toml::Value::String(p)) => Ok(AccessLogTarget::File(ctx.path(&p))),
        Some(other) => Err(ctx.err(
            KEY,
            format!(
                "must be a string (a file, or \"-\" for stdout), not {}",
                other.type_str()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Result<PeerAddr, ConfigError> {
        let ctx = Context {
            file: "t.toml",
            base: Path::new("."),
        };
        ctx.peer_addr("services.x.address[0]", s)
    }

    #[test]
    fn a_peer_address_is_an_ip_and_port_or_a_dns_name_and_port() {
        assert_eq!(
            peer("10.0.0.7:15006").unwrap(),
            PeerAddr::Ip("10.0.0.7:15006".parse().unwrap())
        );
        assert_eq!(
            peer("[::1]:15006").unwrap(),
            PeerAddr::Ip("[::1]:15006".parse().unwrap())
        );
        let named = peer("Ledger.payments.svc.cluster.local:15006").unwrap();
        assert_eq!(
            named,
            PeerAddr::Name {
                host: "ledger.payments.svc.cluster.local".into(),
                port: 15006
            }
        );
        assert_eq!(named.to_string(), "ledger.payments.svc.cluster.local:15006");
        assert!(peer("localhost:1").is_ok());
    }

    #[test]
    fn a_bad_peer_address_is_an_error_naming_the_key() {
        for bad in [
            "ledger",
            "ledger:",
            "ledger:0",
            "ledger:65536",
            "ledger:http",
            ":15006",
            "-ledger:1",
            "led_ger:1",
            "a..b:1",
            "10.0.0:1",
            "::1:80",
            "http://ledger:1",
            "ledger :1",
        ] {
            let e = peer(bad).unwrap_err();
            assert_eq!(e.key, "services.x.address[0]", "{bad}");
            assert!(e.problem.contains("host:port"), "{bad}: {}", e.problem);
        }
        let long = format!("{}:1", "a".repeat(64));
        assert!(peer(&long).is_err(), "a label over 63 bytes");
    }
}
