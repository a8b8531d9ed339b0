//! The acceptance rule every CRL passes before the revocation cache installs it ([`judge`]), and
//! why a refused one was refused ([`InstallError`]).

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use tether_certs::RevocationList;

use crate::metrics::CrlUpdate;

/// How far ahead of our clock a CRL's thisUpdate may be: the clock skew the mesh already
/// tolerates for certificates ([`tether_certs::issue::CLOCK_SKEW`], 5 min). Within it a CRL is
/// taken and its age reads 0; beyond it one of the two clocks is wrong by more than the mesh
/// tolerates, and the list is refused, as OpenSSL refuses a CRL that is not yet valid.
pub(crate) const MAX_CLOCK_SKEW: Duration = tether_certs::issue::CLOCK_SKEW;

/// A time in RFC 3339 to the second (as X.509 carries it), as messages print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When(pub OffsetDateTime);

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.0.replace_nanosecond(0).unwrap_or(self.0);
        match seconds.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

/// Why a (signature-checked) CRL was not installed. The list in force stays.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// thisUpdate is further ahead of our clock than [`MAX_CLOCK_SKEW`].
    #[error(
        "CRL {offered} has thisUpdate {this_update}, more than {skew:?} ahead of our clock \
         ({now}); refusing it (is the CA's clock or ours wrong?)"
    )]
    NotYetValid {
        /// Number offered.
        offered: u64,
        /// Its thisUpdate.
        this_update: When,
        /// Our clock.
        now: When,
        /// The skew tolerated.
        skew: Duration,
    },
    /// A lower number than the list in force, which is fresh (or the offer is no fresher): a
    /// replay of an old list.
    #[error(
        "CRL number {offered} is older than the one in force ({held}, fresh until \
         {held_fresh_until}); refusing a rollback"
    )]
    Rollback {
        /// Number offered.
        offered: u64,
        /// Number held.
        held: u64,
        /// When the list held goes stale (nextUpdate + grace).
        held_fresh_until: When,
    },
    /// Past nextUpdate + grace on arrival, while the list in force is fresh.
    #[error(
        "CRL {offered} is stale on arrival (nextUpdate {next_update} + grace {grace:?} is \
         before now, {now}) while CRL {held} in force is fresh until {held_fresh_until}; \
         keeping CRL {held}"
    )]
    Stale {
        /// Number offered.
        offered: u64,
        /// Its nextUpdate.
        next_update: When,
        /// The grace allowed past nextUpdate.
        grace: Duration,
        /// Our clock.
        now: When,
        /// Number held.
        held: u64,
        /// When the list held goes stale.
        held_fresh_until: When,
    },
}

impl InstallError {
    /// The `result` label this refusal is counted under.
    pub fn result(&self) -> CrlUpdate {
        match self {
            InstallError::NotYetValid { .. } => CrlUpdate::NotYetValid,
            InstallError::Rollback { .. } => CrlUpdate::Rollback,
            InstallError::Stale { .. } => CrlUpdate::Stale,
        }
    }
}

/// What [`judge`] decided for an acceptable CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Install,
    Unchanged,
}

/// The acceptance rule for a CRL whose signature has been verified, against the one `held`, at
/// `now`; "fresh" is "not past nextUpdate + `grace`", the test every handshake uses.
///
/// 1. thisUpdate more than [`MAX_CLOCK_SKEW`] ahead of `now`: refused (`NotYetValid`).
/// 2. Nothing held: installed, even if stale — its revocations are the best knowledge there
///    is, and `on_stale_crl` says what staleness means.
/// 3. The very list held: unchanged.
/// 4. Stale on arrival while the one held is fresh: refused (`Stale`). It would turn a
///    working sidecar into a failing one, whatever its number.
/// 5. A lower number: refused (`Rollback`) while the one held is fresh, or if the offer is
///    stale too. Once the one held is stale, a fresh list is installed whatever its number:
///    the held number is then a claim that has expired, and a CA whose numbering went back (a
///    database restored from backup) must be able to bring its sidecars back.
/// 6. Otherwise (the same or a higher number): installed.
///
/// Order is by CRL number, not thisUpdate: numbers come from the CA's one sequence (in its
/// database, shared by its replicas), while thisUpdate is the signing replica's clock, so two
/// replicas a second apart could order two CRLs backwards by time and drop a revocation. A
/// replayed old list has a lower number: refused by 4 or 5 while ours is fresh, and by 5 once
/// ours is stale unless the CA's own signed nextUpdate still vouches for it — then it is the
/// freshest word from the CA there is.
pub(super) fn judge(
    held: Option<&RevocationList>,
    offered: &RevocationList,
    now: OffsetDateTime,
    grace: Duration,
) -> Result<Verdict, InstallError> {
    if offered.this_update() > now + MAX_CLOCK_SKEW {
        return Err(InstallError::NotYetValid {
            offered: offered.number(),
            this_update: When(offered.this_update()),
            now: When(now),
            skew: MAX_CLOCK_SKEW,
        });
    }
    let Some(held) = held else {
        return Ok(Verdict::Install);
    };
    if offered.der() == held.der() {
        return Ok(Verdict::Unchanged);
    }
    let held_fresh = !held.is_stale(now, grace);
    let offered_fresh = !offered.is_stale(now, grace);
    let held_fresh_until = When(held.next_update() + grace);
    if held_fresh && !offered_fresh {
        return Err(InstallError::Stale {
            offered: offered.number(),
            next_update: When(offered.next_update()),
            grace,
            now: When(now),
            held: held.number(),
            held_fresh_until,
        });
    }
    if offered.number() < held.number() && (held_fresh || !offered_fresh) {
        return Err(InstallError::Rollback {
            offered: offered.number(),
            held: held.number(),
            held_fresh_until,
        });
    }
    Ok(Verdict::Install)
}
