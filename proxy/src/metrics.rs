//! The sidecar's Prometheus metrics, on a registry the caller injects (no globals), so tests can
//! run several sidecars in one process and read each one's figures.

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

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
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "tether_requests_total",
                    "Requests by direction, peer identity and status.",
                ),
                &["direction", "peer", "code"],
            )?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "tether_request_duration_seconds",
                    "Time from request headers to response headers, as seen by the sidecar.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
                &["direction"],
            )?,
            handshakes: IntCounterVec::new(
                Opts::new(
                    "tether_tls_handshakes_total",
                    "mTLS handshakes by direction and result.",
                ),
                &["direction", "result"],
            )?,
            authz: IntCounterVec::new(
                Opts::new(
                    "tether_authz_decisions_total",
                    "Policy decisions by decision and rule.",
                ),
                &["decision", "rule"],
            )?,
            connections_open: IntGaugeVec::new(
                Opts::new("tether_connections_open", "Open connections by direction."),
                &["direction"],
            )?,
            cert_expiry: IntGauge::new(
                "tether_cert_expiry_timestamp_seconds",
                "notAfter of the certificate in use, Unix seconds.",
            )?,
            policy_reloads: IntCounterVec::new(
                Opts::new(
                    "tether_policy_reloads_total",
                    "Policy file reloads by result.",
                ),
                &["result"],
            )?,
            cert_refresh: IntCounterVec::new(
                Opts::new(
                    "tether_cert_refresh_total",
                    "Certificate enrollments, renewals and reloads by result.",
                ),
                &["result"],
            )?,
            crl_number: IntGauge::new("tether_crl_number", "Number of the CRL in force.")?,
            crl_age: Gauge::new(
                "tether_crl_age_seconds",
                "Seconds since thisUpdate of the CRL in force.",
            )?,
            crl_stale: IntGauge::new(
                "tether_crl_stale",
                "1 while the CRL is past nextUpdate + grace.",
            )?,
            revoked_closed: IntCounter::new(
                "tether_revoked_connections_closed_total",
                "Live connections closed because a new CRL revoked the peer.",
            )?,
            time_until_outage: Gauge::new(
                "tether_time_until_outage_seconds",
                "Seconds until this sidecar stops serving if nothing can be renewed from now on.",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_seconds.clone()))?;
        registry.register(Box::new(m.handshakes.clone()))?;
        registry.register(Box::new(m.authz.clone()))?;
        registry.register(Box::new(m.connections_open.clone()))?;
        registry.register(Box::new(m.cert_expiry.clone()))?;
        registry.register(Box::new(m.policy_reloads.clone()))?;
        registry.register(Box::new(m.cert_refresh.clone()))?;
        registry.register(Box::new(m.crl_number.clone()))?;
        registry.register(Box::new(m.crl_age.clone()))?;
        registry.register(Box::new(m.crl_stale.clone()))?;
        registry.register(Box::new(m.revoked_closed.clone()))?;
        registry.register(Box::new(m.time_until_outage.clone()))?;
        Ok(m)
    }
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
