//! `mtlsd-bench uring`: the io_uring question, measured where it could pay off.
//!
//! Bulk forwarding costs the same with and without TLS (`benches/RESULTS.md`): the copy
//! loop's syscalls and the kernel's copies, not AES-GCM. So this measures the copy itself on
//! real loopback sockets: a client thread writes `--mib` MiB into a proxy thread, which copies
//! them to a sink thread's socket, and the proxy thread's own CPU time per GiB is taken
//! (`CLOCK_THREAD_CPUTIME_ID`, plus any io_uring worker threads'), for two copy loops
//! alternated round by round:
//! - `epoll`: mtlsd's own copy loop (`proxy::forward::splice`, whose buffer grows from 16 KiB
//!   to [`BUF_MAX`] while reads fill it) on a current-thread tokio runtime, as the daemon
//!   runs it;
//! - `uring`: the same bytes through io_uring (the `io-uring` crate, no runtime), two buffers
//!   of [`BUF_MAX`], so the write of one buffer and the read into the other go to the kernel
//!   in one `io_uring_enter`.
//!
//! Plaintext on both sides: what io_uring could save is syscall overhead, which TLS does not
//! change. The daemon has no io_uring path; this decides whether to build one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{IoUring, opcode, types};
use mtlsd::metrics::{Direction, Metrics};
use mtlsd::proxy::forward::{BUF_MAX, Buffered, splice};
use serde_json::json;

use crate::workload::emit_phases;

/// Options of `uring`.
#[derive(clap::Args)]
pub struct Args {
    /// Rounds; each copies the bytes once with each loop.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// MiB copied per round and loop.
    #[arg(long, default_value_t = 2048)]
    mib: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

/// Each io_uring buffer: as large as the epoll loop's grows.
const BUF: usize = BUF_MAX;

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU seconds so far of this process's io_uring worker threads (`iou-wrk-*`, where the
/// kernel runs operations it cannot complete inline): part of the uring loop's cost.
fn io_worker_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .map_while(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter(|stat| stat.contains("(iou-"))
        .filter_map(|stat| {
            // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / 100.0
}

/// Copies `from` to `to` until EOF with mtlsd's copy loop; bytes copied.
fn copy_epoll(from: TcpStream, to: TcpStream) -> std::io::Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = Metrics::new().listener("uring-bench", Direction::Inbound);
    rt.block_on(async {
        from.set_nonblocking(true)?;
        to.set_nonblocking(true)?;
        let from = tokio::net::TcpStream::from_std(from)?;
        let to = tokio::net::TcpStream::from_std(to)?;
        let never = tokio_util::sync::CancellationToken::new();
        let from = Buffered::new(from, &metrics.buffer_bytes);
        let forwarded = splice(from, to, Duration::from_secs(60), &never, &metrics).await;
        match forwarded.error {
            Some(e) => Err(e),
            None => Ok(forwarded.from_peer),
        }
    })
}

/// One of the io_uring loop's buffers.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Free,
    Reading,
    /// Holds `len` bytes, `done` of them written; `writing`: a send is in flight.
    Full {
        len: usize,
        done: usize,
        writing: bool,
    },
}

/// Copies `from` to `to` until EOF through io_uring with two buffers: while one is being
/// sent, the next receive fills the other, and both go to the kernel in one call; bytes copied.
fn copy_uring(from: TcpStream, to: TcpStream) -> std::io::Result<u64> {
    const READ: u64 = 1 << 32;
    let mut ring = IoUring::new(8)?;
    let (rfd, wfd) = (types::Fd(from.as_raw_fd()), types::Fd(to.as_raw_fd()));
    let mut bufs: [Vec<u8>; 2] = [vec![0u8; BUF], vec![0u8; BUF]];
    let mut slots = [Slot::Free; 2];
    // Full buffers in the order their bytes arrived: only the first may be sent.
    let mut order: std::collections::VecDeque<usize> = std::collections::VecDeque::with_capacity(2);
    let (mut eof, mut total, mut in_flight) = (false, 0u64, 0usize);
    loop {
        let mut entries = Vec::with_capacity(2);
        if let Some(&i) = order.front()
            && let Slot::Full { len, done, writing } = &mut slots[i]
            && !*writing
        {
            *writing = true;
            let rest = &bufs[i][*done..*len];
            entries.push(
                opcode::Send::new(wfd, rest.as_ptr(), rest.len() as u32)
                    .build()
                    .user_data(i as u64),
            );
        }
        if !eof
            && !slots.contains(&Slot::Reading)
            && let Some(i) = slots.iter().position(|s| *s == Slot::Free)
        {
            slots[i] = Slot::Reading;
            entries.push(
                opcode::Recv::new(rfd, bufs[i].as_mut_ptr(), BUF as u32)
                    .build()
                    .user_data(READ | i as u64),
            );
        }
        for entry in &entries {
            // SAFETY: a buffer is handed to the kernel only while its slot says so (Reading,
            // or Full with a send in flight) and is not touched again until the completion
            // arrives; the loop returns only with nothing in flight, so `bufs` outlives them.
            #[allow(unsafe_code)]
            unsafe {
                ring.submission()
                    .push(entry)
                    .map_err(std::io::Error::other)?;
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        ring.submit_and_wait(1)?;
        let completions: Vec<_> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (data, result) in completions {
            in_flight -= 1;
            if result < 0 {
                return Err(std::io::Error::from_raw_os_error(-result));
            }
            let (i, n) = ((data & 1) as usize, result as usize);
            if data & READ != 0 {
                if n == 0 {
                    eof = true;
                    slots[i] = Slot::Free;
                } else {
                    slots[i] = Slot::Full {
                        len: n,
                        done: 0,
                        writing: false,
                    };
                    order.push_back(i);
                }
            } else if let Slot::Full { len, done, writing } = &mut slots[i] {
                *done += n;
                *writing = false;
                total += n as u64;
                if *done == *len {
                    slots[i] = Slot::Free;
                    order.pop_front();
                }
            }
        }
    }
    to.shutdown(std::net::Shutdown::Write)?;
    Ok(total)
}

/// A thread's result, its panic or I/O error as text.
fn joined<T>(r: std::thread::Result<std::io::Result<T>>) -> Result<T, String> {
    r.map_err(|_| "a thread panicked".to_owned())?
        .map_err(|e| e.to_string())
}

/// One round with `copy`: (proxy thread CPU seconds, bytes copied).
fn round(
    mib: u64,
    copy: fn(TcpStream, TcpStream) -> std::io::Result<u64>,
) -> Result<(f64, u64), String> {
    let bytes = mib * 1024 * 1024;
    let err = |e: std::io::Error| e.to_string();
    let sink = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let front = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let (sink_addr, front_addr) = (
        sink.local_addr().map_err(err)?,
        front.local_addr().map_err(err)?,
    );
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = sink.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n as u64,
            }
        }
    });
    let client = std::thread::spawn(move || -> std::io::Result<()> {
        let mut c = TcpStream::connect(front_addr)?;
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sent = 0u64;
        while sent < bytes {
            let n = chunk.len().min((bytes - sent) as usize);
            c.write_all(&chunk[..n])?;
            sent += n as u64;
        }
        c.shutdown(std::net::Shutdown::Write)
    });
    let proxy = std::thread::spawn(move || -> std::io::Result<(f64, u64)> {
        let (from, _) = front.accept()?;
        let to = TcpStream::connect(sink_addr)?;
        from.set_nodelay(true)?;
        to.set_nodelay(true)?;
        let (cpu0, workers0) = (thread_cpu(), io_worker_cpu());
        let copied = copy(from, to)?;
        let workers = io_worker_cpu() - workers0;
        Ok(((thread_cpu() - cpu0).as_secs_f64() + workers, copied))
    });
    let (cpu, copied) = joined(proxy.join())?;
    joined(client.join())?;
    let received = joined(sink.join())?;
    if copied != bytes || received != bytes {
        return Err(format!(
            "copied {copied} and received {received} of {bytes} bytes"
        ));
    }
    Ok((cpu, copied))
}

/// Runs the rounds: a table on stderr, the JSON report on stdout.
pub async fn run(args: Args) -> Result<(), String> {
    let gib = args.mib as f64 / 1024.0;
    let mut phases = Vec::new();
    for r in 1..=args.rounds {
        for (name, copy) in [
            ("epoll", copy_epoll as fn(_, _) -> _),
            ("uring", copy_uring as fn(_, _) -> _),
        ] {
            let (cpu, _) = tokio::task::spawn_blocking(move || round(args.mib, copy))
                .await
                .map_err(|e| e.to_string())??;
            eprintln!(
                "mtlsd-bench uring: round {r}: {name}: {:.3} s of CPU per GiB",
                cpu / gib
            );
            phases.push(
                json!({ "loop": name, "round": r, "cpu_s_per_gib": cpu / gib, "failures": 0 }),
            );
        }
    }
    let median = |name: &str| {
        let of: Vec<serde_json::Value> = phases
            .iter()
            .filter(|p| p["loop"] == name)
            .cloned()
            .collect();
        crate::workload::median_of(&of, "cpu_s_per_gib")
    };
    let (epoll, uring) = (median("epoll"), median("uring"));
    eprintln!(
        "median CPU per GiB of the copying thread: epoll {epoll:.3} s, io_uring {uring:.3} s ({:+.0} %)",
        100.0 * (uring / epoll - 1.0)
    );
    let report = json!({
        "mib": args.mib,
        "buffer_bytes": BUF,
        "epoll_cpu_s_per_gib": epoll,
        "uring_cpu_s_per_gib": uring,
        "rounds": phases,
    });
    emit_phases(&report, args.json_out.as_deref(), &phases)
}
