//! The fleet: every sidecar that long-polls `GET /v1/crl` with its client certificate reports
//! its instance id, the CRL number it holds (`after=N` acknowledges N) and its bundle version.
//! The CA records that per instance ([`crate::store::FleetMember`]), which is what
//! `tether-ca fleet` prints, `revoke --wait` waits on, `root retire` and `check` consult, and
//! `tether_ca_fleet_size` counts.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::authority::Authority;
use crate::error::CaError;
use crate::store::FleetMember;
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

/// How `revoke --wait` ended.
#[derive(Debug, Clone)]
pub struct Acknowledgement {
    /// The CRL number waited for.
    pub crl_number: u64,
    /// How many sidecars had to acknowledge it (those seen within [`FLEET_WINDOW`] at the start).
    pub members: usize,
    /// Those that had not when the wait ended (empty: all did).
    pub lagging: Vec<FleetMember>,
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
    /// Records a CRL poll by the sidecar presenting `peer_chain`, which must authenticate
    /// (chain, unexpired, unrevoked, issued here). `instance` falls back to the certificate's
    /// serial when absent or unusable.
    pub fn record_poll(
        &self,
        peer_chain: &[CertificateDer<'_>],
        instance: Option<&str>,
        crl_number: u64,
        bundle_version: Option<u64>,
    ) -> Result<FleetMember, CaError> {
        let leaf = self.authenticate(peer_chain)?;
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
            last_seen: OffsetDateTime::now_utc().unix_timestamp(),
        };
        self.store().record_poll(&member)?;
        Ok(member)
    }

    /// Sidecars seen within `within`.
    pub fn fleet(&self, within: Duration) -> Result<Vec<FleetMember>, CaError> {
        Ok(self.store().fleet(seen_since(within))?)
    }

    /// How many sidecars were seen within [`FLEET_WINDOW`].
    pub fn fleet_size(&self) -> Result<u64, CaError> {
        Ok(self.store().fleet_size(seen_since(FLEET_WINDOW))?)
    }

    /// Forgets sidecars not seen within [`FLEET_RETENTION`].
    pub fn prune_fleet(&self) -> Result<usize, CaError> {
        Ok(self.store().prune_fleet(seen_since(FLEET_RETENTION))?)
    }

    /// Waits until every sidecar seen within [`FLEET_WINDOW`] (as of now) has acknowledged CRL
    /// `crl_number` or newer — polled with `after` ≥ it — or `timeout` passes, re-reading the
    /// fleet table every [`ACK_POLL_INTERVAL`]. Blocks the calling thread (the CLI's).
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
            let lagging: Vec<FleetMember> = self
                .store()
                .fleet(since)?
                .into_iter()
                .filter(|m| members.contains(&m.instance) && m.crl_number < crl_number)
                .collect();
            if lagging.is_empty() || started.elapsed() >= timeout {
                return Ok(Acknowledgement {
                    crl_number,
                    members: members.len(),
                    lagging,
                    took: started.elapsed(),
                });
            }
            std::thread::sleep(ACK_POLL_INTERVAL.min(timeout.saturating_sub(started.elapsed())));
        }
    }
}

/// The Unix time `within` ago: the oldest `last_seen` still counted.
fn seen_since(within: Duration) -> i64 {
    sub_secs(OffsetDateTime::now_utc().unix_timestamp(), within)
}
