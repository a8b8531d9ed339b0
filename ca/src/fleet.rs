//! The fleet: every sidecar that long-polls `GET /v1/crl` with its client certificate reports
//! its instance id, the CRL number it holds (`after=N` acknowledges N) and its bundle version.
//! The CA records that per instance ([`crate::store::FleetMember`]), which is what
//! `tether-ca fleet` prints, `revoke --wait` waits on, `root retire` and `check` consult, and
//! `tether_ca_fleet_size` counts. Because those decisions rest on it, a poll may report only what
//! this CA published, and only under an instance whose row is its own (see
//! [`Authority::record_poll`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::authority::Authority;
use crate::error::CaError;
use crate::store::{FleetMember, PollRecord, Unpublished};
use crate::timefmt::sub_secs;

/// A sidecar counts as part of the fleet while its latest poll is this recent. Sidecars poll
/// about every 30 s (a long-poll's wait) or at once after each new CRL, so a live sidecar is
/// never older than this; one that missed two polls is treated as gone.
pub const FLEET_WINDOW: Duration = Duration::from_secs(60);

/// How often `revoke --wait` re-reads the fleet table: fine enough that the wait ends within a
/// tenth of a second of the last acknowledgement, coarse enough to cost nothing.
pub const ACK_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Fleet rows not refreshed for this long are deleted (a sidecar's instance id is per process,
/// so restarted sidecars leave their old rows behind).
pub const FLEET_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many sidecars seen within [`FLEET_WINDOW`] hold less than this CA publishes: what
/// `tether_ca_fleet_behind{what}` exports. A sidecar whose certificate is revoked is not counted
/// (it cannot poll again, so it can never catch up; `revoke --wait` skips it too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetLag {
    /// Those holding a trust bundle older than the published version, or that never said which
    /// they hold (as for `root retire`, a sidecar that has not shown it holds the current
    /// bundle is not assumed to).
    pub bundle: u64,
    /// Those holding a CRL older than the newest published (each one for a moment after every
    /// publish, until its long-poll brings the new list and its next poll acknowledges it).
    pub crl: u64,
}

/// How `revoke --wait` ended.
#[derive(Debug, Clone)]
pub struct Acknowledgement {
    /// The CRL number waited for.
    pub crl_number: u64,
    /// How many sidecars had to acknowledge it: those seen within [`FLEET_WINDOW`] at the start,
    /// less those in `revoked`.
    pub members: usize,
    /// Those that had not when the wait ended (empty: all did).
    pub lagging: Vec<FleetMember>,
    /// Sidecars seen at the start whose certificate is revoked (by this revocation, typically):
    /// they can no longer authenticate a poll, so they were not waited for.
    pub revoked: Vec<FleetMember>,
    /// How long the wait took.
    pub took: Duration,
}

/// The longest `x-tether-instance` recorded as given; anything longer or with characters
/// outside visible ASCII is replaced by the certificate serial (it is an opaque label, and the
/// table is printed to terminals).
pub const MAX_INSTANCE_LEN: usize = 128;

/// Whether `instance` is usable as a fleet key (see [`MAX_INSTANCE_LEN`]).
pub fn valid_instance(instance: &str) -> bool {
    !instance.is_empty()
        && instance.len() <= MAX_INSTANCE_LEN
        && instance.bytes().all(|b| b.is_ascii_graphic())
}

impl Authority {
    /// Records a CRL poll by the sidecar presenting `peer_chain`. `instance` falls back to the
    /// certificate's serial when absent or unusable.
    ///
    /// A chain that does not authenticate (chain, unexpired, unrevoked, issued here) records
    /// nothing and is not an error: `Ok(None)`. A poll is refused, writing nothing, when it
    /// reports a CRL number or bundle version this CA never published
    /// ([`CaError::BadRequest`]), or when its instance's row belongs to another identity, or to
    /// another lineage of the same identity whose certificate can still poll
    /// ([`CaError::Forbidden`]).
    pub fn record_poll(
        &self,
        peer_chain: &[CertificateDer<'_>],
        instance: Option<&str>,
        crl_number: u64,
        bundle_version: Option<u64>,
    ) -> Result<Option<FleetMember>, CaError> {
        let leaf = match self.authenticate(peer_chain) {
            Ok(leaf) => leaf,
            Err(e) => {
                tracing::debug!("CRL poll not recorded in the fleet: {e}");
                return Ok(None);
            }
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let member = FleetMember {
            instance: instance
                .filter(|i| valid_instance(i))
                .map(str::to_string)
                .unwrap_or_else(|| leaf.serial.to_string()),
            spiffe_id: leaf.id.to_string(),
            serial: leaf.serial.to_string(),
            cert_not_after: leaf.not_after.unix_timestamp(),
            crl_number,
            bundle_version,
            last_seen: now,
            cert_revoked: false,
        };
        match self.store().record_poll(&member, now)? {
            PollRecord::Recorded => Ok(Some(member)),
            PollRecord::Unpublished(u) => Err(unpublished(&u)),
            PollRecord::Taken => {
                tracing::warn!(
                    "refused a CRL poll by {} (certificate {}) under instance {}: that fleet row \
                     belongs to another sidecar",
                    member.spiffe_id,
                    member.serial,
                    member.instance
                );
                Err(CaError::Forbidden(format!(
                    "fleet instance {} belongs to another sidecar; report under your own \
                     x-tether-instance",
                    member.instance
                )))
            }
        }
    }

    /// Refuses ([`CaError::BadRequest`]) a poll that reports CRL `crl_number` or bundle
    /// `bundle_version` when this CA never published it — the check [`Authority::record_poll`]
    /// makes, for polls that record nothing.
    pub fn check_poll(&self, crl_number: u64, bundle_version: Option<u64>) -> Result<(), CaError> {
        match self.store().unpublished(crl_number, bundle_version)? {
            Some(u) => Err(unpublished(&u)),
            None => Ok(()),
        }
    }

    /// Sidecars seen within `within`.
    pub fn fleet(&self, within: Duration) -> Result<Vec<FleetMember>, CaError> {
        Ok(self.store().fleet(seen_since(within))?)
    }

    /// How many sidecars were seen within [`FLEET_WINDOW`].
    pub fn fleet_size(&self) -> Result<u64, CaError> {
        Ok(self.store().fleet_size(seen_since(FLEET_WINDOW))?)
    }

    /// How many sidecars seen within [`FLEET_WINDOW`] are behind on the bundle or the CRL
    /// ([`FleetLag`]), as `ca.db` says now.
    pub fn fleet_lag(&self) -> Result<FleetLag, CaError> {
        let since = seen_since(FLEET_WINDOW);
        let mut store = self.store();
        let (bundle, crl) = (store.bundle_version()?, store.latest_crl_number()?);
        let mut lag = FleetLag::default();
        for m in store.fleet(since)?.iter().filter(|m| !m.cert_revoked) {
            lag.bundle += u64::from(m.bundle_version.is_none_or(|v| v < bundle));
            lag.crl += u64::from(m.crl_number < crl);
        }
        Ok(lag)
    }

    /// Forgets sidecars not seen within [`FLEET_RETENTION`].
    pub fn prune_fleet(&self) -> Result<usize, CaError> {
        Ok(self.store().prune_fleet(seen_since(FLEET_RETENTION))? as usize)
    }

    /// Waits until every sidecar seen within [`FLEET_WINDOW`] (as of now) has acknowledged CRL
    /// `crl_number` or newer — polled with `after` ≥ it — or `timeout` passes, re-reading the
    /// fleet table every [`ACK_POLL_INTERVAL`]. A sidecar whose certificate is revoked is not
    /// waited for (it could never acknowledge: its polls no longer authenticate) and is returned
    /// in [`Acknowledgement::revoked`]. Blocks the calling thread (the CLI's).
    pub fn wait_for_acknowledgement(
        &self,
        crl_number: u64,
        timeout: Duration,
    ) -> Result<Acknowledgement, CaError> {
        let started = Instant::now();
        let since = seen_since(FLEET_WINDOW);
        // A row's last_seen only moves forward, so every member of this set stays in
        // `fleet(since)` for the whole wait, polling or not.
        let members: HashSet<String> = self
            .store()
            .fleet(since)?
            .into_iter()
            .map(|m| m.instance)
            .collect();
        loop {
            // Re-judged on every pass: a revocation lands during the wait, or a revoked sidecar
            // enrolls again under the same instance and can acknowledge after all.
            let (revoked, waited): (Vec<FleetMember>, Vec<FleetMember>) = self
                .store()
                .fleet(since)?
                .into_iter()
                .filter(|m| members.contains(&m.instance))
                .partition(|m| m.cert_revoked);
            let waited_for = waited.len();
            let lagging: Vec<FleetMember> = waited
                .into_iter()
                .filter(|m| m.crl_number < crl_number)
                .collect();
            if lagging.is_empty() || started.elapsed() >= timeout {
                return Ok(Acknowledgement {
                    crl_number,
                    members: waited_for,
                    lagging,
                    revoked,
                    took: started.elapsed(),
                });
            }
            std::thread::sleep(ACK_POLL_INTERVAL.min(timeout.saturating_sub(started.elapsed())));
        }
    }
}

/// The refusal of a poll that reports something this CA never published.
fn unpublished(u: &Unpublished) -> CaError {
    CaError::BadRequest(match u {
        Unpublished::Crl { claimed, newest } => format!(
            "after={claimed} names no CRL this CA published (the newest is number {newest})"
        ),
        Unpublished::Bundle { claimed, newest } => format!(
            "x-tether-bundle-version {claimed} is no bundle this CA published (the current one \
             is version {newest})"
        ),
    })
}

/// The Unix time `within` ago: the oldest `last_seen` still counted.
fn seen_since(within: Duration) -> i64 {
    sub_secs(OffsetDateTime::now_utc().unix_timestamp(), within)
}
