//! The CA's Prometheus metrics, registered on a registry the caller injects (no globals), so
//! tests can run several CAs in one process and read each one's figures.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The CA's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// `tether_ca_certificates_issued_total{method}`: `enroll` or `renew`.
    pub issued: IntCounterVec,
    /// `tether_ca_revocations_total`.
    pub revocations: prometheus::IntCounter,
    /// `tether_ca_request_failures_total{endpoint,reason}`; reason is the HTTP status class
    /// word (`bad_request`, `unauthorized`, `forbidden`, `not_found`, `too_large`, `internal`).
    pub failures: IntCounterVec,
    /// `tether_ca_requests_total{endpoint,code}`.
    pub requests: IntCounterVec,
    /// `tether_ca_crl_number`: the newest published CRL number.
    pub crl_number: IntGauge,
    /// `tether_ca_crl_publishes_total`.
    pub crl_publishes: prometheus::IntCounter,
    /// `tether_ca_crl_waiters`: long-poll requests waiting for a newer CRL.
    pub crl_waiters: IntGauge,
    /// `tether_ca_issuance_duration_seconds`: CSR parse + sign + commit.
    pub issuance_seconds: Histogram,
    /// `tether_ca_fleet_size`: sidecars that polled for CRLs with a client certificate within
    /// the last minute.
    pub fleet_size: IntGauge,
    /// `tether_ca_bundle_version`: the version of the trust bundle this server publishes.
    pub bundle_version: IntGauge,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Metrics {
            issued: IntCounterVec::new(
                Opts::new(
                    "tether_ca_certificates_issued_total",
                    "Leaves issued over the API.",
                ),
                &["method"],
            )?,
            revocations: prometheus::IntCounter::new(
                "tether_ca_revocations_total",
                "Certificates revoked through the API (one per certificate, also by identity).",
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "tether_ca_request_failures_total",
                    "Refused or failed API requests.",
                ),
                &["endpoint", "reason"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "tether_ca_requests_total",
                    "API requests by endpoint and status.",
                ),
                &["endpoint", "code"],
            )?,
            crl_number: IntGauge::new("tether_ca_crl_number", "Newest published CRL number.")?,
            crl_publishes: prometheus::IntCounter::new(
                "tether_ca_crl_publishes_total",
                "CRLs published by this server (revocations and scheduled re-signing).",
            )?,
            crl_waiters: IntGauge::new(
                "tether_ca_crl_waiters",
                "CRL long-poll requests currently waiting.",
            )?,
            issuance_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tether_ca_issuance_duration_seconds",
                    "Time to parse a CSR, sign a leaf and commit it.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            )?,
            fleet_size: IntGauge::new(
                "tether_ca_fleet_size",
                "Sidecars that polled for CRLs with a client certificate in the last minute.",
            )?,
            bundle_version: IntGauge::new(
                "tether_ca_bundle_version",
                "Version of the trust bundle this server publishes.",
            )?,
        };
        registry.register(Box::new(m.issued.clone()))?;
        registry.register(Box::new(m.revocations.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.crl_number.clone()))?;
        registry.register(Box::new(m.crl_publishes.clone()))?;
        registry.register(Box::new(m.crl_waiters.clone()))?;
        registry.register(Box::new(m.issuance_seconds.clone()))?;
        registry.register(Box::new(m.fleet_size.clone()))?;
        registry.register(Box::new(m.bundle_version.clone()))?;
        Ok(m)
    }
}

/// `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    // The text encoder only fails on a write error, and writing to a Vec cannot fail.
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
