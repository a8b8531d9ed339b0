//! The accept loop gives a closed connection's memory back when the connection ends, not at the
//! next accept: after a burst of connections that all close, the heap is back where it was,
//! though nobody connects again. Counted with a global allocator of this test binary's own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tether_net::{serve, ListenerLimits};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// The system allocator, counting the bytes live at any moment.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Connections in the burst, and the state each one's future holds across its await.
const BURST: usize = 1000;
const STATE: usize = 1024;
/// What a closed connection may leave behind, on average. Measured: about 8 bytes each with
/// every task joined as it ends, 190 when they wait for the next accept (a task's cell and its
/// place in the set; in a release build, where tokio keeps futures up to 16 KiB inline in the
/// cell, the whole connection future: 4 KiB a sidecar connection).
const LEFT_PER_CONNECTION: usize = 64;

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_closed_connections_leaves_no_memory_behind() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ListenerLimits {
        max_connections: 10_000,
        overflow: 0,
        drain: Duration::from_secs(1),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        "test",
        listener,
        limits,
        async {
            let _ = stop_rx.await;
        },
        |mut tcp: TcpStream, _, _, _| async move {
            // Held across the read, so it lives in the task's future, as a connection's does.
            let state = [7u8; STATE];
            let mut byte = [0u8; 1];
            let _ = tcp.read(&mut byte).await;
            std::hint::black_box(&state);
        },
    ));
    // Warm up once (the runtime's and the listener's own allocations), then measure.
    burst(addr, 8).await;
    settle().await;
    let before = LIVE.load(Ordering::Relaxed);
    burst(addr, BURST).await;
    settle().await;
    let left = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        left < (BURST * LEFT_PER_CONNECTION) as isize,
        "{left} bytes still live after {BURST} connections closed; at most \
         {LEFT_PER_CONNECTION} each may stay"
    );
    stop_tx.send(()).unwrap();
    server.await.unwrap();
}

/// Opens `n` connections, waits until the loop has accepted them all, then closes them.
async fn burst(addr: std::net::SocketAddr, n: usize) {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    // Accepted, and each handler's future started: give the loop time to take them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conns);
}

/// Lets every connection task see its peer's close and end.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}
