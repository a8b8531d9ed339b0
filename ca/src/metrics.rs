//! The CA's Prometheus metrics, registered on a registry the caller injects (no globals), so
//! tests can run several CAs in one process and read each one's figures. Label values are typed
//! ([`IssueMethod`], [`FailureReason`], the API's `Endpoint::label`), never string literals at
//! the call sites.
//!
//! The CA certificates `tether-ca check` watches for expiry, and how many sidecars lag behind
//! the published bundle and CRL, are exported by [`Findings`], read from `ca.db` at every scrape
//! (never on a timer that would lag it, and never a second copy of the rules: the certificates
//! come from [`Authority::ca_certificates`], which `check` uses too). A scrape therefore touches
//! the database, so `/metrics` is rendered on the blocking pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::authority::Authority;
use crate::check::CaCertificate;
use crate::fleet::FleetLag;

/// The CA's metrics.
#[derive(Clone)]
pub(crate) struct Metrics {
    /// `tether_ca_certificates_issued_total{method}`: `enroll` or `renew`.
    issued: IntCounterVec,
    /// `tether_ca_revocations_total`.
    pub(crate) revocations: prometheus::IntCounter,
    /// `tether_ca_request_failures_total{endpoint,reason}`; reason is the HTTP status class
    /// word (`bad_request`, `unauthorized`, `forbidden`, `not_found`, `too_large`, `internal`),
    /// or `not_allowed` for a Kubernetes service account outside `--k8s-allow`.
    failures: IntCounterVec,
    /// `tether_ca_requests_total{endpoint,code}`.
    requests: IntCounterVec,
    /// `tether_ca_crl_number`: the newest published CRL number.
    pub(crate) crl_number: IntGauge,
    /// `tether_ca_crl_publishes_total`.
    pub(crate) crl_publishes: prometheus::IntCounter,
    /// `tether_ca_crl_waiters`: long-poll requests waiting for a newer CRL.
    pub(crate) crl_waiters: IntGauge,
    /// `tether_ca_issuance_duration_seconds`: CSR parse + sign + commit.
    issuance_seconds: Histogram,
    /// `tether_ca_fleet_size`: sidecars that polled for CRLs with a client certificate within
    /// the last minute.
    pub(crate) fleet_size: IntGauge,
    /// `tether_ca_bundle_version`: the version of the trust bundle this server publishes.
    pub(crate) bundle_version: IntGauge,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`, with [`Findings`] reading
    /// `authority`.
    pub(crate) fn register(
        registry: &Registry,
        authority: Arc<Authority>,
    ) -> Result<Self, prometheus::Error> {
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
        registry.register(Box::new(Findings::new(authority)?))?;
        Ok(m)
    }

    /// Counts one answered request under `endpoint` and its status code.
    pub(crate) fn count_request(&self, endpoint: &str, status: StatusCode) {
        self.requests
            .with_label_values(&[endpoint, status.as_str()])
            .inc();
    }

    /// Counts one refused or failed request under `endpoint` and `reason`.
    pub(crate) fn count_failure(&self, endpoint: &str, reason: FailureReason) {
        self.failures
            .with_label_values(&[endpoint, reason.as_str()])
            .inc();
    }

    /// Counts one leaf issued over the API by `method`, which took `took`.
    pub(crate) fn count_issued(&self, method: IssueMethod, took: Duration) {
        self.issuance_seconds.observe(took.as_secs_f64());
        self.issued.with_label_values(&[method.as_str()]).inc();
    }
}

/// The `check` findings as gauges, computed from `ca.db` whenever the registry is gathered:
/// - `tether_ca_certificate_expiry_timestamp_seconds{kind,generation}`: notAfter of each CA
///   certificate in force ([`Authority::ca_certificates`]): `kind="root"` for every root in the
///   bundle (two or more only during a rotation, until `root retire`), `kind="intermediate"` for
///   the current one. `generation` is the one `tether-ca root list` prints, so the labels stay
///   as few as the roots in the bundle.
/// - `tether_ca_fleet_behind{what}`: sidecars in the fleet window holding an older `bundle` or
///   `crl` than this CA publishes ([`Authority::fleet_lag`]).
///
/// If the database cannot be read, neither is exported for that scrape (and a warning is
/// logged): an absent series is something an alert can see, a stale value would not be.
struct Findings {
    /// The CA whose state is read.
    authority: Arc<Authority>,
    /// `tether_ca_certificate_expiry_timestamp_seconds`.
    expiry: GaugeVec,
    /// `tether_ca_fleet_behind`.
    behind: IntGaugeVec,
    /// Held from reset to collect, so that two scrapes at once cannot mix their readings.
    collecting: Mutex<()>,
}

impl Findings {
    fn new(authority: Arc<Authority>) -> Result<Self, prometheus::Error> {
        Ok(Findings {
            authority,
            expiry: GaugeVec::new(
                Opts::new(
                    "tether_ca_certificate_expiry_timestamp_seconds",
                    "notAfter of the CA certificates in force (roots in the bundle, the current \
                     intermediate), Unix seconds.",
                ),
                &["kind", "generation"],
            )?,
            behind: IntGaugeVec::new(
                Opts::new(
                    "tether_ca_fleet_behind",
                    "Sidecars seen in the last minute holding an older trust bundle or CRL than \
                     this CA publishes.",
                ),
                &["what"],
            )?,
            collecting: Mutex::new(()),
        })
    }

    /// What `ca.db` says now.
    fn read(&self) -> Result<(Vec<CaCertificate>, FleetLag), crate::CaError> {
        Ok((
            self.authority.ca_certificates()?,
            self.authority.fleet_lag()?,
        ))
    }
}

impl Collector for Findings {
    fn desc(&self) -> Vec<&Desc> {
        self.expiry
            .desc()
            .into_iter()
            .chain(self.behind.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        self.expiry.reset();
        self.behind.reset();
        match self.read() {
            Ok((certs, lag)) => {
                for c in certs {
                    self.expiry
                        .with_label_values(&[c.kind.as_str(), &c.generation.to_string()])
                        .set(c.not_after as f64);
                }
                self.behind
                    .with_label_values(&["bundle"])
                    .set(lag.bundle as i64);
                self.behind.with_label_values(&["crl"]).set(lag.crl as i64);
            }
            Err(e) => tracing::warn!(
                "reading the CA's state for /metrics failed; the expiry and fleet gauges are left \
                 out of this scrape: {e}"
            ),
        }
        let mut families = self.expiry.collect();
        families.extend(self.behind.collect());
        families
    }
}

/// How a certificate was issued: the `method` column of `certificates` and the `method` label
/// of `tether_ca_certificates_issued_total` (which counts `enroll` and `renew`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IssueMethod {
    /// The admin client credential, made by `init` and each rotation.
    Admin,
    /// `tether-ca issue`.
    Cli,
    /// `POST /v1/enroll`.
    Enroll,
    /// `POST /v1/renew`.
    Renew,
    /// The API's own TLS certificate, made by `init` and each rotation.
    Server,
}

impl IssueMethod {
    /// Its name in the database and in metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IssueMethod::Admin => "admin",
            IssueMethod::Cli => "cli",
            IssueMethod::Enroll => "enroll",
            IssueMethod::Renew => "renew",
            IssueMethod::Server => "server",
        }
    }
}

/// The `reason` label of `tether_ca_request_failures_total`: the class of the error status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    /// 400.
    BadRequest,
    /// 403.
    Forbidden,
    /// 500 and every status without a word of its own.
    Internal,
    /// 405.
    MethodNotAllowed,
    /// 403 for a Kubernetes service account outside `--k8s-allow`.
    NotAllowed,
    /// 404.
    NotFound,
    /// 413.
    TooLarge,
    /// 401.
    Unauthorized,
    /// 503: the database, or the cluster's JWKS, cannot be reached, or this replica was removed
    /// (retryable; the sidecar tries the next replica). Apart from `internal`, so a database
    /// outage has its own alert.
    Unavailable,
}

impl FailureReason {
    /// The reason an error answer with `status` is counted under.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => FailureReason::BadRequest,
            StatusCode::UNAUTHORIZED => FailureReason::Unauthorized,
            StatusCode::FORBIDDEN => FailureReason::Forbidden,
            StatusCode::NOT_FOUND => FailureReason::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => FailureReason::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => FailureReason::TooLarge,
            StatusCode::SERVICE_UNAVAILABLE => FailureReason::Unavailable,
            _ => FailureReason::Internal,
        }
    }

    /// Its label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureReason::BadRequest => "bad_request",
            FailureReason::Forbidden => "forbidden",
            FailureReason::Internal => "internal",
            FailureReason::MethodNotAllowed => "method_not_allowed",
            FailureReason::NotAllowed => "not_allowed",
            FailureReason::NotFound => "not_found",
            FailureReason::TooLarge => "too_large",
            FailureReason::Unauthorized => "unauthorized",
            FailureReason::Unavailable => "unavailable",
        }
    }
}

/// `registry` in the Prometheus text format.
pub(crate) fn render(registry: &Registry) -> String {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    // The text encoder only fails on a write error, and writing to a Vec cannot fail.
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
