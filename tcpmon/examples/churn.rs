//! Loopback connection churn for benchmarks: as many short TCP connections per second as
//! the machine allows (server closes first, so TIME_WAIT stays on the server side and
//! client ports are free again at once). Each connection makes 10 state transitions.
//!
//!     cargo run --release --example churn -- SECONDS [CLIENT_THREADS] [PORT]
//!
//! Prints `connections=N seconds=S rate=R` on stdout.
use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let clients: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let port: u16 = args.next().and_then(|s| s.parse().ok()).unwrap_or(7700);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind");
    let addr: SocketAddr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                drop(stream); // active close on the server side
            }
        });
    }
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            thread::spawn(move || {
                let mut buf = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    // Wait for the server's FIN, then close our end (passive close).
                    let _ = s.read(&mut buf);
                    drop(s);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    // Wake the acceptor so it sees `stop`.
    let _ = TcpStream::connect(addr);
    println!(
        "connections={n} seconds={elapsed:.2} rate={:.0}",
        n as f64 / elapsed
    );
}
