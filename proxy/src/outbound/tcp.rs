//! TCP services: each connection to a service's local listener is carried as opaque bytes over
//! an mTLS connection to one of the service's addresses, and cut when the peer is revoked.

use std::future::Future;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::forward;
use crate::identity::Alpn;
use crate::metrics::Direction;
use crate::outbound::route::Route;
use crate::outbound::{connect::peer_serial, Outbound};

/// Serves a TCP service's local listener until `shutdown` resolves.
pub async fn run_tcp(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    route: Arc<Route>,
    shutdown: impl Future<Output = ()>,
) {
    // No HTTP to answer a connection past the limit with: it is closed at once.
    let limits = forward::tcp_listener_limits(&outbound.limits);
    tether_net::serve(
        "outbound-tcp",
        listener,
        limits,
        shutdown,
        move |tcp, _, _, _| {
            let outbound = outbound.clone();
            let route = route.clone();
            async move { carry(&outbound, &route, tcp).await }
        },
    )
    .await;
}

/// Carries one app connection to `route` until either side closes or the peer is revoked.
async fn carry(outbound: &Outbound, route: &Route, mut tcp: TcpStream) {
    let _open = outbound.metrics.open_connection(Direction::Outbound);
    let Some(creds) = outbound.usable_identity() else {
        return;
    };
    match outbound
        .connect_route(route, &creds, Alpn::None, route.turn())
        .await
    {
        Ok((mut tls, _, _)) => {
            let live = outbound.revocation.watch(&peer_serial(&tls));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut tcp, &mut tls) => {}
                _ = live.revoked() => tracing::info!("closed TCP connection to revoked peer of {}", route.name),
            }
        }
        Err(e) => tracing::warn!("outbound TCP to {}: {e}", route.name),
    }
}
