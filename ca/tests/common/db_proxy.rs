//! A TCP forwarder between a CA and its PostgreSQL server that the test can freeze: while frozen
//! it forwards nothing in either direction and answers nothing, yet keeps every socket open —
//! the database as a CA sees it when the server hangs or a middlebox stalls (no RST, no FIN,
//! TCP still acknowledges). Thawing closes the stalled connections and forwards new ones.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a stalled copy looks at the switch.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// The forwarder; it runs until the test process ends.
pub struct DbProxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
}

impl DbProxy {
    /// Forwards a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> DbProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (f, e) = (frozen.clone(), epoch.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (f, e) = (f.clone(), e.clone());
                std::thread::spawn(move || connect(client, target, f, e));
            }
        });
        DbProxy {
            addr,
            frozen,
            epoch,
        }
    }

    /// Where to connect instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding, silently.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Closes what was stalled and forwards again.
    pub fn thaw(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.frozen.store(false, Ordering::SeqCst);
    }
}

fn connect(client: TcpStream, target: SocketAddr, frozen: Arc<AtomicBool>, epoch: Arc<AtomicU64>) {
    let born = epoch.load(Ordering::SeqCst);
    // A connection that arrives while frozen waits, unanswered, for the thaw that closes it.
    while frozen.load(Ordering::SeqCst) {
        if epoch.load(Ordering::SeqCst) != born {
            return;
        }
        std::thread::sleep(LOOK_EVERY);
    }
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    for s in [&client, &server] {
        let _ = s.set_read_timeout(Some(LOOK_EVERY));
    }
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (f2, e2) = (frozen.clone(), epoch.clone());
    std::thread::spawn(move || copy(c2, s2, f2, e2, born));
    copy(server, client, frozen, epoch, born);
}

fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    frozen: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
    born: u64,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if epoch.load(Ordering::SeqCst) != born {
            break;
        }
        if frozen.load(Ordering::SeqCst) {
            std::thread::sleep(LOOK_EVERY);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
