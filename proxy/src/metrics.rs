//! The sidecar's Prometheus metrics, on a registry the caller injects (no globals), so tests can
//! run several sidecars in one process and read each one's figures. Labels are typed
//! ([`Direction`], [`crate::tls::HandshakeResult`], [`AuthzLabel`], [`Outcome`]) so a label value
//! is spelled in exactly one place.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::tls::HandshakeResult;

/// Which listener side a figure belongs to (`direction` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Peers → this sidecar → the local app.
    Inbound,
    /// The local app → this sidecar → peers.
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The `decision` label of `tether_authz_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzLabel {
    /// A rule matched.
    Allow,
    /// An audit-mode policy would have denied, and allowed.
    AuditDeny,
    /// No rule matched: refused.
    Deny,
}

impl AuthzLabel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzLabel::Allow => "allow",
            AuthzLabel::AuditDeny => "audit_deny",
            AuthzLabel::Deny => "deny",
        }
    }
}

/// The `result` label of reload and refresh counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Started from the cached certificate (`tether_cert_refresh_total` only).
    Cache,
    /// The reload or refresh failed; the old state is kept.
    Error,
    /// It worked.
    Ok,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Cache => "cache",
            Outcome::Error => "error",
            Outcome::Ok => "ok",
        }
    }

    /// `Ok` or `Error` for a result.
    pub fn of<T, E>(r: &Result<T, E>) -> Self {
        if r.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        }
    }
}

/// Every metric the sidecar exports.
#[derive(Clone)]
pub struct Metrics {
    /// `tether_requests_total{direction,peer,code}`.
    pub requests: IntCounterVec,
    /// `tether_request_duration_seconds{direction}`.
    pub request_seconds: HistogramVec,
    /// `tether_tls_handshakes_total{direction,result}`: `ok` or the failure reason (`no_cert`,
    /// `unknown_ca`, `revoked`, `expired`, `bad_svid`, `identity_mismatch`, `timeout`,
    /// `bad_chain`, `protocol`).
    pub handshakes: IntCounterVec,
    /// `tether_authz_decisions_total{decision,rule}`: `allow`, `deny` or `audit_deny`.
    pub authz: IntCounterVec,
    /// `tether_connections_open{direction}`.
    pub connections_open: IntGaugeVec,
    /// `tether_cert_expiry_timestamp_seconds`: notAfter of the certificate in use.
    pub cert_expiry: IntGauge,
    /// `tether_policy_reloads_total{result}`: `ok` or `error`.
    pub policy_reloads: IntCounterVec,
    /// `tether_cert_refresh_total{result}`: `ok`, `error`, or `cache` (started from the cache).
    pub cert_refresh: IntCounterVec,
    /// `tether_crl_number`: the CRL in force.
    pub crl_number: IntGauge,
    /// `tether_crl_age_seconds`: now − thisUpdate of the CRL in force.
    pub crl_age: Gauge,
    /// `tether_crl_stale`: 1 while the CRL is past nextUpdate + grace.
    pub crl_stale: IntGauge,
    /// `tether_revoked_connections_closed_total`: live connections cut by a new CRL.
    pub revoked_closed: IntCounter,
    /// `tether_time_until_outage_seconds`: service left if nothing can be renewed from now on.
    pub time_until_outage: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counters = |name: &str, help: &str, labels: &[&str]| {
            add(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let gauge = |name: &str, help: &str| add(registry, IntGauge::new(name, help)?);
        let seconds = |name: &str, help: &str| add(registry, Gauge::new(name, help)?);
        Ok(Metrics {
            requests: counters(
                "tether_requests_total",
                "Requests by direction, peer identity and status.",
                &["direction", "peer", "code"],
            )?,
            request_seconds: add(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tether_request_duration_seconds",
                        "Time from request headers to response headers, as seen by the sidecar.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                    ]),
                    &["direction"],
                )?,
            )?,
            handshakes: counters(
                "tether_tls_handshakes_total",
                "mTLS handshakes by direction and result.",
                &["direction", "result"],
            )?,
            authz: counters(
                "tether_authz_decisions_total",
                "Policy decisions by decision and rule.",
                &["decision", "rule"],
            )?,
            connections_open: add(
                registry,
                IntGaugeVec::new(
                    Opts::new("tether_connections_open", "Open connections by direction."),
                    &["direction"],
                )?,
            )?,
            cert_expiry: gauge(
                "tether_cert_expiry_timestamp_seconds",
                "notAfter of the certificate in use, Unix seconds.",
            )?,
            policy_reloads: counters(
                "tether_policy_reloads_total",
                "Policy file reloads by result.",
                &["result"],
            )?,
            cert_refresh: counters(
                "tether_cert_refresh_total",
                "Certificate enrollments, renewals and reloads by result.",
                &["result"],
            )?,
            crl_number: gauge("tether_crl_number", "Number of the CRL in force.")?,
            crl_age: seconds(
                "tether_crl_age_seconds",
                "Seconds since thisUpdate of the CRL in force.",
            )?,
            crl_stale: gauge(
                "tether_crl_stale",
                "1 while the CRL is past nextUpdate + grace.",
            )?,
            revoked_closed: add(
                registry,
                IntCounter::new(
                    "tether_revoked_connections_closed_total",
                    "Live connections closed because a new CRL revoked the peer.",
                )?,
            )?,
            time_until_outage: seconds(
                "tether_time_until_outage_seconds",
                "Seconds until this sidecar stops serving if nothing can be renewed from now on.",
            )?,
        })
    }

    /// Counts one handshake (or refusal before one) on `direction`.
    pub fn count_handshake(&self, direction: Direction, result: HandshakeResult) {
        self.handshakes
            .with_label_values(&[direction.as_str(), result.as_str()])
            .inc();
    }

    /// `tether_requests_total` for one (direction, peer, status); resolve it once and keep the
    /// handle where a label set repeats on every request.
    pub fn requests_for(&self, direction: Direction, peer: &str, status: &str) -> IntCounter {
        self.requests
            .with_label_values(&[direction.as_str(), peer, status])
    }

    /// The latency histogram of `direction`.
    pub fn latency(&self, direction: Direction) -> Histogram {
        self.request_seconds
            .with_label_values(&[direction.as_str()])
    }

    /// Counts one policy decision.
    pub fn count_authz(&self, decision: AuthzLabel, rule: &str) {
        self.authz
            .with_label_values(&[decision.as_str(), rule])
            .inc();
    }

    /// Counts one policy reload.
    pub fn count_policy_reload(&self, outcome: Outcome) {
        self.policy_reloads
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// Counts one certificate enrollment, renewal or reload.
    pub fn count_cert_refresh(&self, outcome: Outcome) {
        self.cert_refresh
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// Counts one open connection on `direction` until the guard drops.
    pub fn open_connection(&self, direction: Direction) -> OpenConnection {
        OpenConnection::new(
            self.connections_open
                .with_label_values(&[direction.as_str()]),
        )
    }
}

/// Registers `collector` on `registry` and hands it back, so a metric is created and registered
/// in one expression.
fn add<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// Decrements a connection gauge when dropped, so every exit path of a connection task counts.
pub struct OpenConnection(IntGauge);

impl OpenConnection {
    /// Increments `gauge` until the guard drops.
    pub fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail on I/O.
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
