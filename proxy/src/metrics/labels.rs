//! The typed label values of the sidecar's metrics, each spelled in exactly one place.

use http::StatusCode;

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

/// The `result` label of `tether_crl_updates_total`: what became of a CRL offered to the
/// revocation cache by its one acceptance rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlUpdate {
    /// It is now in force.
    Installed,
    /// Refused: its thisUpdate is too far ahead of our clock.
    NotYetValid,
    /// Refused: a lower number than the list in force.
    Rollback,
    /// Refused: stale on arrival while the list in force is fresh.
    Stale,
}

impl CrlUpdate {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CrlUpdate::Installed => "installed",
            CrlUpdate::NotYetValid => "not_yet_valid",
            CrlUpdate::Rollback => "rollback",
            CrlUpdate::Stale => "stale",
        }
    }
}

/// The `reason` label of `tether_ca_failovers_total`: why the CA URL in use did not take a call
/// that another URL then answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverReason {
    /// The connection could not be made (refused, reset, TLS failure) or broke before the whole
    /// answer was read (the replica died mid-call, or keepalive found its host gone).
    Connect,
    /// It answered 5xx: up, but unable to serve (its database is down, say).
    Status,
    /// The connection or the answer took longer than allowed.
    Timeout,
}

impl FailoverReason {
    /// Every reason, so a CA-mode sidecar exports each series from the start (at 0) and a rate
    /// over it never starts from a missing series.
    pub const ALL: [FailoverReason; 3] = [
        FailoverReason::Connect,
        FailoverReason::Status,
        FailoverReason::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverReason::Connect => "connect",
            FailoverReason::Status => "status",
            FailoverReason::Timeout => "timeout",
        }
    }
}

/// The `code` label of `tether_request_duration_seconds`: the status class, so a histogram's
/// series stay five per (direction, peer) however many distinct statuses a service answers.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
