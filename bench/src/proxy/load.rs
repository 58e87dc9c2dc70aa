//! The echo app and the plaintext load: open-loop latency at a fixed rate, bulk
//! throughput, and idle connections. Blocking threads, not tokio, so that the generator's
//! timing is as precise as `nanosleep` (tokio's timer has millisecond resolution).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Read and write timeout of every load connection: a stuck proxy fails the run, not hangs it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts an echo server on 127.0.0.1 (a thread per connection, small stacks) and returns
/// its address. It lives as long as the bench.
pub fn start_echo() -> io::Result<SocketAddr> {
    serve_echo(TcpListener::bind("127.0.0.1:0")?)
}

/// Serves echo on `listener` (which may be in another network namespace) for as long as
/// the bench runs; returns its address.
pub fn serve_echo(listener: TcpListener) -> io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            let _ = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
        }
    });
    Ok(addr)
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// `n` connections to `addr` for [`open_loop`], kept open across its slices.
pub fn connect_all(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    (0..n)
        .map(|_| connect(addr).with_context(|| format!("connecting to {addr}")))
        .collect()
}

/// Open-loop latency: `rate` messages of `size` bytes per second spread over the
/// persistent connections `conns` for `duration`, each message sent at its scheduled time
/// whether or not earlier replies came back, and timed from that scheduled time to the end
/// of its echo (so a stall is charged to every message it delays). Samples from the first
/// `warmup` are dropped. Every reply is read before it returns, so the connections are
/// quiet and ready for the next call.
pub fn open_loop(
    conns: &[TcpStream],
    rate: u32,
    size: usize,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<Vec<Duration>> {
    if size < 8 || conns.is_empty() || rate == 0 {
        bail!("messages need at least 8 bytes, and rate and connections must be positive");
    }
    let n = conns.len();
    let per_conn = (f64::from(rate) * (duration + warmup).as_secs_f64() / n as f64) as u64;
    let interval = Duration::from_secs_f64(n as f64 / f64::from(rate));
    // Time for the threads below to start before the first message is due.
    let start = Instant::now() + Duration::from_millis(10);
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        // Stagger the connections evenly inside one interval.
        let offset = interval.mul_f64(c as f64 / n as f64);
        let mut writer = conn.try_clone()?;
        writers.push(std::thread::spawn(move || -> io::Result<()> {
            let mut msg = vec![0u8; size];
            for i in 0..per_conn {
                let due = offset + interval.mul_f64(i as f64);
                let wait = (start + due).saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                msg[..8].copy_from_slice(&(due.as_nanos() as u64).to_le_bytes());
                writer.write_all(&msg)?;
            }
            Ok(())
        }));
        let mut reader = conn.try_clone()?;
        readers.push(std::thread::spawn(move || -> io::Result<Vec<Duration>> {
            let mut msg = vec![0u8; size];
            let mut samples = Vec::with_capacity(per_conn as usize);
            for _ in 0..per_conn {
                reader.read_exact(&mut msg)?;
                let done = Instant::now();
                let mut due = [0u8; 8];
                due.copy_from_slice(&msg[..8]);
                let due = Duration::from_nanos(u64::from_le_bytes(due));
                if due >= warmup {
                    samples.push(done.saturating_duration_since(start + due));
                }
            }
            Ok(samples)
        }));
    }
    for w in writers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a load writer panicked"))?
            .context("sending")?;
    }
    let mut all = Vec::new();
    for r in readers {
        all.extend(
            r.join()
                .map_err(|_| anyhow::anyhow!("a load reader panicked"))?
                .context("receiving echoes")?,
        );
    }
    Ok(all)
}

/// Bulk throughput: `conns` connections each send `bytes` and read the same number back.
/// Returns how long that took (every byte crosses the proxies twice).
pub fn bulk(addr: SocketAddr, conns: usize, bytes: usize) -> anyhow::Result<Duration> {
    let mut streams = Vec::new();
    for _ in 0..conns {
        streams.push(connect(addr)?);
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    for stream in streams {
        let mut writer = stream.try_clone()?;
        let w = std::thread::spawn(move || -> io::Result<()> {
            let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                writer.write_all(&chunk[..n])?;
                left -= n;
            }
            Ok(())
        });
        let mut reader = stream;
        let r = std::thread::spawn(move || -> io::Result<()> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = reader.read(&mut buf[..left.min(64 * 1024)])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n;
            }
            Ok(())
        });
        handles.push((w, r));
    }
    for (w, r) in handles {
        w.join()
            .map_err(|_| anyhow::anyhow!("a bulk writer panicked"))?
            .context("bulk send")?;
        r.join()
            .map_err(|_| anyhow::anyhow!("a bulk reader panicked"))?
            .context("bulk receive")?;
    }
    Ok(started.elapsed())
}

/// One byte there and back on a fresh connection, proving the whole path is up.
pub fn round_trip(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut conn = connect(addr).with_context(|| format!("connecting to {addr}"))?;
    conn.write_all(b"x")?;
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte)
        .with_context(|| format!("no echo through {addr}"))?;
    Ok(conn)
}

/// Opens `n` connections through `addr`, each with one round trip, and keeps them open.
pub fn open_idle(addr: SocketAddr, n: usize, deadline: Instant) -> anyhow::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        if Instant::now() > deadline {
            bail!("opened only {i} of {n} idle connections before the deadline");
        }
        conns.push(round_trip(addr).with_context(|| format!("idle connection {i}"))?);
    }
    Ok(conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_against_a_real_echo_meets_its_count() {
        let echo = start_echo().expect("echo");
        let conns = connect_all(echo, 2).expect("connect");
        // Twice over the same connections: each call leaves them quiet for the next.
        for _ in 0..2 {
            let samples = open_loop(
                &conns,
                1000,
                64,
                Duration::from_millis(200),
                Duration::from_millis(100),
            )
            .expect("load");
            // 300 ms at 1000/s, the first 100 ms dropped: about 200 samples.
            assert!((150..=220).contains(&samples.len()), "{}", samples.len());
            assert!(samples.iter().all(|d| *d < IO_TIMEOUT));
        }
    }

    #[test]
    fn bulk_and_idle_connections_round_trip() {
        let echo = start_echo().expect("echo");
        let took = bulk(echo, 2, 1 << 20).expect("bulk");
        assert!(took > Duration::ZERO && took < IO_TIMEOUT);
        let conns = open_idle(echo, 20, Instant::now() + Duration::from_secs(20)).expect("idle");
        assert_eq!(conns.len(), 20);
        let one = connect_all(echo, 1).expect("connect");
        assert!(open_loop(&one, 0, 64, Duration::ZERO, Duration::ZERO).is_err());
        assert!(open_loop(&[], 1000, 64, Duration::ZERO, Duration::ZERO).is_err());
    }
}
