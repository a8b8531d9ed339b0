//! Failover across the `[ca] urls`: which outcomes of one URL pass a call on to the next
//! ([`Miss`], [`judge`]), the loop that walks the URLs from the one in use ([`CaClient::call`]),
//! and the count and warning of each move away from the URL in use. The URL in use is the last
//! one that accepted a call (completed its TLS handshake), so while a long-poll is held it is
//! the replica holding it.
//!
//! A connection error, a timeout and a 5xx pass the call on: each says "this replica cannot
//! serve now", and another may. Every other answer is the answer, a 4xx included: a revoked or
//! unknown identity, a used token, a bad CSR are the same at every replica, so asking the next
//! would only repeat the refusal (and spend a one-time token's chance elsewhere). When every URL
//! misses, a 5xx answer, if any came, is what the caller gets (it says more than "unreachable",
//! and the caller treats it as retryable); otherwise the error lists each URL's miss.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Uri;

use tether_certs::TrustBundle;

use super::{refused, transport, Answer, CaClient, CaClientError, Call};
use crate::identity::Credentials;
use crate::metrics::FailoverReason;

/// How often a failover away from the same URL is logged again: each move is counted in
/// `tether_ca_failovers_total`, but a replica that keeps failing (or two that flap) should not
/// write a line per call.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One `[ca] urls` entry, as calls reach it and as logs, errors and `/identity` name it.
pub(super) struct Target {
    /// The host name or IP address (no brackets): what is resolved, connected to and named in
    /// the TLS handshake.
    pub(super) host: String,
    /// The port (443 if the URL names none).
    pub(super) port: u16,
    /// `host[:port]` as configured, never userinfo: the `Host` field sent.
    pub(super) authority: String,
    /// `https://host[:port]`: how it is named everywhere, so no userinfo a URL might carry
    /// reaches a log line, an error or `/identity`.
    pub(super) shown: String,
    /// The rate limit of the warnings about moving away from it.
    warned: Mutex<Quiet>,
}

impl Target {
    /// The target `url` names (an `https://host[:port]` URL, as the config validated it).
    pub(super) fn new(url: &Uri) -> Self {
        let bracketed = url.host().unwrap_or("localhost");
        let authority = match url.port_u16() {
            Some(port) => format!("{bracketed}:{port}"),
            None => bracketed.to_string(),
        };
        Target {
            host: bracketed
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: url.port_u16().unwrap_or(443),
            shown: format!("https://{authority}"),
            authority,
            warned: Mutex::new(Quiet::default()),
        }
    }
}

/// Why one URL did not take a call, so the call goes on to the next URL.
#[derive(Debug)]
pub(super) enum Miss {
    /// The connection could not be made (refused, reset, no route, TLS failure) or broke before
    /// the whole answer was read (the replica died mid-call; keepalive found its host gone).
    Connection(String),
    /// The connection or the answer did not come within its time.
    Timeout {
        /// What did not come: `"connection"` or `"answer"`.
        what: &'static str,
        /// The time it had.
        after: Duration,
    },
    /// The CA answered 5xx: up but unable to serve (its database is down, say). Boxed: an
    /// answer's header map is large next to the other misses.
    Status(Box<Answer>),
}

impl Miss {
    /// The `reason` label of a failover away from a URL that missed this way.
    pub(super) fn reason(&self) -> FailoverReason {
        match self {
            Miss::Connection(_) => FailoverReason::Connect,
            Miss::Timeout { .. } => FailoverReason::Timeout,
            Miss::Status(_) => FailoverReason::Status,
        }
    }
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Connection(e) => f.write_str(e),
            Miss::Timeout { what, after } => write!(f, "no {what} within {after:?}"),
            Miss::Status(answer) => write!(f, "{}", refused(answer.0, &answer.2)),
        }
    }
}

/// Whether `answer` is the answer to the call (any status below 500) or a [`Miss`] that passes
/// it on (5xx).
pub(super) fn judge(answer: Answer) -> Result<Answer, Miss> {
    if answer.0.is_server_error() {
        Err(Miss::Status(Box::new(answer)))
    } else {
        Ok(answer)
    }
}

impl CaClient {
    /// Sends `call` to each URL in turn, starting with the one in use, until one answers (see
    /// the module doc). A URL that accepts the call (its TLS handshake completes) is in use
    /// from then on — at once, not when it answers, since a long-poll's answer may be half a
    /// minute away and `/identity` must show where the poll is held. Each change of the URL
    /// in use is counted and logged ([`Self::moved`]).
    pub(super) async fn call(
        &self,
        bundle: &TrustBundle,
        creds: Option<&Arc<Credentials>>,
        call: Call<'_>,
    ) -> Result<Answer, CaClientError> {
        let config = self.tls.get(bundle, creds)?;
        let n = self.targets.len();
        let first = self.in_use.load(Ordering::Relaxed);
        // The URL in use as this call left it, and why it missed, if it did.
        let (mut current, mut left) = (first, None);
        let mut overloaded = None;
        let mut misses = Vec::new();
        for idx in (0..n).map(|i| (first + i) % n) {
            let target = &self.targets[idx];
            let asked = match transport::connect(target, config.clone()).await {
                Ok(session) => {
                    if let Some(why) = left.take() {
                        self.moved(current, idx, why);
                    }
                    current = idx;
                    transport::ask(session, target, &call).await.and_then(judge)
                }
                Err(miss) => Err(miss),
            };
            match asked {
                Ok(answer) => return Ok(answer),
                Err(miss) => {
                    tracing::debug!("CA {} did not take the call: {miss}", target.shown);
                    misses.push(format!("{}: {miss}", target.shown));
                    if idx == current {
                        left = Some((miss.reason(), miss.to_string()));
                    }
                    if let Miss::Status(answer) = miss {
                        overloaded = Some(*answer);
                    }
                }
            }
        }
        match overloaded {
            Some(answer) => Ok(answer),
            None if misses.is_empty() => Err(CaClientError::Unreachable("no CA URL".into())),
            None => Err(CaClientError::Unreachable(misses.join("; "))),
        }
    }

    /// Makes URL `to` the one in use instead of `from` (which missed for `why`): counts the
    /// move and warns about it, unless a move away from `from` was logged less than
    /// [`WARN_EVERY`] ago.
    fn moved(&self, from: usize, to: usize, (reason, detail): (FailoverReason, String)) {
        self.in_use.store(to, Ordering::Relaxed);
        self.failovers.with_label_values(&[reason.as_str()]).inc();
        let (left, now_in_use) = (&self.targets[from], &self.targets[to]);
        let quiet = left
            .warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(Instant::now());
        if let Some(unlogged) = quiet {
            let unlogged = match unlogged {
                0 => String::new(),
                n => format!(" ({n} more failover(s) from it since the last warning)"),
            };
            tracing::warn!(
                "CA {} failed ({}: {detail}); CA calls now go to {}{unlogged}",
                left.shown,
                reason.as_str(),
                now_in_use.shown
            );
        }
    }
}

/// A warning rate limit: the first event warns, then at most one per [`WARN_EVERY`], carrying
/// how many went unlogged in between.
#[derive(Debug, Default)]
pub(super) struct Quiet {
    last: Option<Instant>,
    unlogged: u64,
}

impl Quiet {
    /// Notes one event at `now`; `Some(events not logged since the last line)` if a line is
    /// due, `None` to keep quiet.
    pub(super) fn note(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}
