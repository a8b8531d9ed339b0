//! The sidecar's Prometheus metrics, on a registry the caller injects (no globals), so tests can
//! run several sidecars in one process and read each one's figures. Labels are typed
//! ([`Direction`], [`crate::tls::HandshakeResult`], [`AuthzLabel`], [`Outcome`], [`CrlUpdate`],
//! [`FailoverReason`])
//! so a label value is spelled in exactly one place ([`labels`]).
//!
//! Every label set is bounded by the mesh: `peer` takes the SPIFFE IDs of the sidecar's callers
//! (inbound; only identities that passed the mTLS handshake) and of its configured services
//! (outbound), `code` a status or status class, `rule` the policy's rule names. A series exists
//! only once its direction has carried traffic, so a sidecar exports nothing for a direction it
//! does not serve (an empty histogram reads as a NaN quantile on a dashboard).
//!
//! The lifecycle gauges (certificate expiry, CRL number, age and staleness, time until outage)
//! are functions of the clock, so they are computed when the registry is gathered — at every
//! scrape, from the state `/identity` reads — never set on a timer that would lag it.

use std::sync::{Arc, RwLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    PullingGauge, Registry,
};

use crate::tls::HandshakeResult;

mod labels;

pub use labels::{status_class, AuthzLabel, CrlUpdate, Direction, FailoverReason, Outcome};

/// What the lifecycle gauges show at one instant, as [`Metrics::read_lifecycle_from`]'s reader
/// computes it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LifecycleReading {
    /// notAfter of the certificate in use, Unix seconds (0 before the first).
    pub cert_expiry: i64,
    /// The number of the CRL in force (0 if none).
    pub crl_number: u64,
    /// Seconds since its thisUpdate, never negative (0 if none).
    pub crl_age_seconds: f64,
    /// Whether it is past nextUpdate + grace.
    pub crl_stale: bool,
    /// Seconds of service left if nothing can be renewed from now on.
    pub time_until_outage_seconds: f64,
    /// Seconds until the CRL in force goes stale (nextUpdate + grace), negative once it is;
    /// `+Inf` while no CRL is held, since nothing can go stale.
    pub crl_seconds_until_stale: f64,
}

/// The reader behind the lifecycle gauges; empty (every gauge reads 0) until one is set.
type LifecycleSource = Arc<RwLock<Option<Box<dyn Fn() -> LifecycleReading + Send + Sync>>>>;

/// Every metric the sidecar exports.
#[derive(Clone)]
pub struct Metrics {
    /// `tether_requests_total{direction,peer,code}`.
    pub requests: IntCounterVec,
    /// `tether_request_duration_seconds{direction,peer,code}`; `code` is the status class.
    pub request_seconds: HistogramVec,
    /// `tether_request_bytes_total{direction,peer}`: request body bytes received.
    pub request_bytes: IntCounterVec,
    /// `tether_response_bytes_total{direction,peer}`: response body bytes sent.
    pub response_bytes: IntCounterVec,
    /// `tether_access_log_dropped_total`: access-log lines lost (queue full, or a write error).
    pub access_log_dropped: IntCounter,
    /// `tether_tls_handshakes_total{direction,result}`: `ok` or the failure reason (`no_cert`,
    /// `unknown_ca`, `revoked`, `expired`, `bad_svid`, `identity_mismatch`, `timeout`,
    /// `bad_chain`, `protocol`).
    pub handshakes: IntCounterVec,
    /// `tether_authz_decisions_total{decision,rule}`: `allow`, `deny` or `audit_deny`.
    pub authz: IntCounterVec,
    /// `tether_connections_open{direction}`.
    pub connections_open: IntGaugeVec,
    /// `tether_policy_reloads_total{result}`: `ok` or `error`.
    pub policy_reloads: IntCounterVec,
    /// `tether_cert_refresh_total{result}`: `ok`, `error`, or `cache` (started from the cache).
    pub cert_refresh: IntCounterVec,
    /// `tether_revoked_connections_closed_total`: live connections cut by a new CRL.
    pub revoked_closed: IntCounter,
    /// `tether_crl_updates_total{result}`: CRLs offered to the revocation cache, by
    /// [`CrlUpdate`].
    pub crl_updates: IntCounterVec,
    /// `tether_ca_failovers_total{reason}`: CA calls that moved from the URL in use to another
    /// URL that answered, by [`FailoverReason`].
    pub ca_failovers: IntCounterVec,
    /// Computes the lifecycle gauges at each gather: `tether_cert_expiry_timestamp_seconds`,
    /// `tether_crl_number`, `tether_crl_age_seconds`, `tether_crl_stale`,
    /// `tether_time_until_outage_seconds`, `tether_crl_seconds_until_stale`.
    lifecycle: LifecycleSource,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counters = |name: &str, help: &str, labels: &[&str]| {
            add(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let counter = |name: &str, help: &str| add(registry, IntCounter::new(name, help)?);
        let lifecycle = LifecycleSource::default();
        register_lifecycle(registry, &lifecycle)?;
        Ok(Metrics {
            requests: counters(
                "tether_requests_total",
                "Requests by direction, peer identity and status.",
                &["direction", "peer", "code"],
            )?,
            request_seconds: add(registry, request_seconds()?)?,
            request_bytes: counters(
                "tether_request_bytes_total",
                "Request body bytes received, by direction and peer identity.",
                &["direction", "peer"],
            )?,
            response_bytes: counters(
                "tether_response_bytes_total",
                "Response body bytes sent, by direction and peer identity.",
                &["direction", "peer"],
            )?,
            access_log_dropped: counter(
                "tether_access_log_dropped_total",
                "Access-log lines lost: the write queue was full, or the write failed.",
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
            revoked_closed: counter(
                "tether_revoked_connections_closed_total",
                "Live connections closed because a new CRL revoked the peer.",
            )?,
            crl_updates: counters(
                "tether_crl_updates_total",
                "CRLs offered to the revocation cache, by result (installed or why refused).",
                &["result"],
            )?,
            ca_failovers: counters(
                "tether_ca_failovers_total",
                "CA calls that moved from the CA URL in use to another that answered, by why the \
                 one in use did not (connect, timeout, status).",
                &["reason"],
            )?,
            lifecycle,
        })
    }

    /// Makes the lifecycle gauges read `read` at every gather of the registry, so each scrape
    /// shows the state at that instant.
    pub fn read_lifecycle_from(&self, read: impl Fn() -> LifecycleReading + Send + Sync + 'static) {
        *self.lifecycle.write().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(read));
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

    /// The handles of one (direction, peer) pair that every request of it touches, resolved
    /// once so the common request hashes no labels.
    pub fn series(&self, direction: Direction, peer: &str) -> Series {
        let d = direction.as_str();
        Series {
            ok: self.requests.with_label_values(&[d, peer, "200"]),
            ok_seconds: self.request_seconds.with_label_values(&[d, peer, "2xx"]),
            bytes_in: self.request_bytes.with_label_values(&[d, peer]),
            bytes_out: self.response_bytes.with_label_values(&[d, peer]),
        }
    }

    /// Counts one answered request of (direction, peer) that took `seconds` to its response
    /// head: through `series`'s handles for a `200`, by label lookup otherwise. `series` is
    /// `None` for a request with no peer (the outbound found no route): it is never a `200`,
    /// and resolving handles for it would export an empty `2xx` histogram.
    pub fn count_request(
        &self,
        series: Option<&Series>,
        (direction, peer): (Direction, &str),
        status: http::StatusCode,
        seconds: f64,
    ) {
        if let (Some(series), http::StatusCode::OK) = (series, status) {
            series.ok.inc();
            return series.ok_seconds.observe(seconds);
        }
        let d = direction.as_str();
        self.requests
            .with_label_values(&[d, peer, status.as_str()])
            .inc();
        let histogram = match (series, status_class(status)) {
            (Some(series), "2xx") => series.ok_seconds.clone(),
            (_, class) => self.request_seconds.with_label_values(&[d, peer, class]),
        };
        histogram.observe(seconds);
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

/// `tether_request_duration_seconds{direction,peer,code}`, with buckets from 0.5 ms (a
/// keep-alive hop on one host) to 5 s.
fn request_seconds() -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(
        "tether_request_duration_seconds",
        "Time from request headers to response headers, as seen by the sidecar.",
    )
    .buckets(vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ]);
    HistogramVec::new(opts, &["direction", "peer", "code"])
}

/// Registers the lifecycle gauges, each computed from `source` when gathered.
fn register_lifecycle(
    registry: &Registry,
    source: &LifecycleSource,
) -> Result<(), prometheus::Error> {
    type Pick = fn(&LifecycleReading) -> f64;
    let gauges: [(&str, &str, Pick); 6] = [
        (
            "tether_cert_expiry_timestamp_seconds",
            "notAfter of the certificate in use, Unix seconds.",
            |r| r.cert_expiry as f64,
        ),
        ("tether_crl_number", "Number of the CRL in force.", |r| {
            r.crl_number as f64
        }),
        (
            "tether_crl_age_seconds",
            "Seconds since thisUpdate of the CRL in force (never negative).",
            |r| r.crl_age_seconds,
        ),
        (
            "tether_crl_stale",
            "1 while the CRL is past nextUpdate + grace.",
            |r| f64::from(u8::from(r.crl_stale)),
        ),
        (
            "tether_time_until_outage_seconds",
            "Seconds until this sidecar stops serving if nothing can be renewed from now on.",
            |r| r.time_until_outage_seconds,
        ),
        (
            "tether_crl_seconds_until_stale",
            "Seconds until the CRL in force is past nextUpdate + grace; negative once it is.",
            |r| r.crl_seconds_until_stale,
        ),
    ];
    for (name, help, pick) in gauges {
        let source = source.clone();
        let read = move || {
            let source = source.read().unwrap_or_else(|p| p.into_inner());
            source.as_ref().map(|read| pick(&read())).unwrap_or(0.0)
        };
        registry.register(Box::new(PullingGauge::new(name, help, Box::new(read))?))?;
    }
    Ok(())
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

/// The per-request handles of one (direction, peer) pair ([`Metrics::series`]).
#[derive(Clone)]
pub struct Series {
    /// `tether_requests_total{code="200"}`.
    pub ok: IntCounter,
    /// `tether_request_duration_seconds{code="2xx"}`.
    pub ok_seconds: Histogram,
    /// `tether_request_bytes_total`.
    pub bytes_in: IntCounter,
    /// `tether_response_bytes_total`.
    pub bytes_out: IntCounter,
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
