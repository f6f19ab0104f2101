//! `loadgen`: the end-to-end load generator for Sockeye. See `benches/LOADGEN.md`.
//!
//! Modes: `echo` (WebSocket echo round trips, K in flight per connection, every byte
//! verified, latency per message), `raw` (the same loop on plain TCP against `rawecho`, the
//! physical ceiling), `idle` (N handshaken idle connections; server RSS per connection),
//! `fanout` (P publishers and N subscribers in a broadcast room such as the demo's `/chat`;
//! every delivery verified, publish-to-subscriber latency, lost messages).
//! One mio event loop per thread (`--threads`, default 1), preallocated buffers, no allocation
//! per message. `loadgen --help` lists the flags.

#[path = "../loadgen/args.rs"]
mod args;
#[path = "../loadgen/hist.rs"]
mod hist;
#[path = "../loadgen/procstat.rs"]
mod procstat;
#[path = "../loadgen/report.rs"]
mod report;
#[path = "../loadgen/tls.rs"]
mod tls;
#[path = "../loadgen/worker/mod.rs"]
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use args::{Args, Mode};
use procstat::CpuTimes;
use worker::{FanShared, Progress, Shared, WorkerResult};

/// /proc samples taken at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) at: Option<Instant>,
    pub(crate) server_cpu: Option<f64>,
    pub(crate) self_cpu: Option<f64>,
    pub(crate) server_core: Option<CpuTimes>,
    pub(crate) loadgen_core: Option<CpuTimes>,
    pub(crate) server_rss: Option<u64>,
    /// The machine-wide /proc/stat `cpu` line: how busy the whole box was (noise check).
    pub(crate) all_cores: Option<CpuTimes>,
}

fn sample(args: &Args) -> Sample {
    let pid = args.server_pid.map(|p| p.to_string());
    Sample {
        at: Some(Instant::now()),
        server_cpu: pid.as_deref().and_then(procstat::proc_cpu_secs),
        self_cpu: procstat::proc_cpu_secs("self"),
        server_core: args.server_cpu.and_then(|c| CpuTimes::read(Some(c))),
        loadgen_core: args.loadgen_cpu.and_then(|c| CpuTimes::read(Some(c))),
        all_cores: CpuTimes::read(None),
        server_rss: pid.as_deref().and_then(procstat::rss_bytes),
    }
}

struct Ticker {
    start: Instant,
    last: Instant,
    last_msgs: u64,
    last_published: u64,
}

impl Ticker {
    fn tick(&mut self, args: &Args, shared: &Shared, phase: &str) {
        let now = Instant::now();
        if now - self.last < Duration::from_secs(1) {
            return;
        }
        let msgs: u64 = shared.progress.iter().map(|p| p.msgs.load(Ordering::Relaxed)).sum();
        let open: u64 = shared.progress.iter().map(|p| p.open.load(Ordering::Relaxed)).sum();
        let errs: u64 = shared.progress.iter().map(|p| p.errors.load(Ordering::Relaxed)).sum();
        let published: u64 =
            shared.progress.iter().map(|p| p.published.load(Ordering::Relaxed)).sum();
        let secs = (now - self.last).as_secs_f64();
        let rate = (msgs - self.last_msgs) as f64 / secs;
        let pub_rate = (published - self.last_published) as f64 / secs;
        self.last = now;
        self.last_msgs = msgs;
        self.last_published = published;
        if args.quiet {
            return;
        }
        if args.mode == Mode::Idle {
            eprintln!(
                "[{:6.1}s] {phase:<8} open {open:>7}/{}  errors {errs}",
                (now - self.start).as_secs_f64(),
                args.connections
            );
        } else if args.mode == Mode::Fanout {
            eprintln!(
                "[{:6.1}s] {phase:<8} published {pub_rate:>9.0}/s  delivered {rate:>11.0}/s  open {open:>6}  errors {errs}",
                (now - self.start).as_secs_f64()
            );
        } else {
            eprintln!(
                "[{:6.1}s] {phase:<8} {rate:>11.0} msg/s  open {open:>6}  errors {errs}",
                (now - self.start).as_secs_f64()
            );
        }
    }

    /// Sleeps until `until`, ticking every second.
    fn wait(&mut self, until: Instant, args: &Args, shared: &Shared, phase: &str) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(100)));
            self.tick(args, shared, phase);
        }
    }
}

fn main() {
    let args = Arc::new(Args::parse());
    let nofile = procstat::raise_nofile();
    if (nofile as usize) < args.total_connections() + 64 {
        eprintln!(
            "loadgen: warning: RLIMIT_NOFILE is {nofile}, fewer than {} connections + 64",
            args.total_connections()
        );
    }
    let shared = Arc::new(Shared {
        progress: (0..args.threads).map(|_| Progress::default()).collect(),
        t0: OnceLock::new(),
        stop: AtomicBool::new(false),
        base: Instant::now(),
        fan: Arc::new(FanShared::new(args.publishers)),
    });
    let before = sample(&args);
    let start = Instant::now();
    let handles: Vec<_> = (0..args.threads)
        .map(|t| {
            let n =
                args.connections / args.threads + usize::from(t < args.connections % args.threads);
            let (a, s) = (args.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || worker::run(a, s, t, n))
                .expect("spawn worker thread")
        })
        .collect();
    let mut ticker = Ticker { start, last: start, last_msgs: 0, last_published: 0 };
    while !shared.progress.iter().all(|p| p.ready.load(Ordering::Acquire)) {
        std::thread::sleep(Duration::from_millis(5));
        ticker.tick(&args, &shared, "connect");
    }
    let setup = start.elapsed();
    let opened: u64 = shared.progress.iter().map(|p| p.open.load(Ordering::Relaxed)).sum();
    let mut t0 = Instant::now();
    if opened == 0 {
        // Nothing to measure: start the clock so that every phase is already over.
        eprintln!("loadgen: no connection could be opened");
        let span = Duration::from_secs_f64(args.warmup + args.duration + args.settle + args.hold);
        t0 = t0.checked_sub(span).unwrap_or(t0);
    }
    let _ = shared.t0.set(t0);

    let mut report = report::Report::new(&args);
    report.setup = setup;
    match args.mode {
        Mode::Echo | Mode::Raw | Mode::Fanout => {
            let t_warm = t0 + Duration::from_secs_f64(args.warmup);
            let t_end = t_warm + Duration::from_secs_f64(args.duration);
            ticker.wait(t_warm, &args, &shared, "warmup");
            let s0 = sample(&args);
            ticker.wait(t_end, &args, &shared, "measure");
            let s1 = sample(&args);
            report.window_samples = Some((s0, s1));
        }
        Mode::Idle => {
            ticker.wait(t0 + Duration::from_secs_f64(args.settle), &args, &shared, "settle");
            let s0 = sample(&args);
            ticker.wait(
                t0 + Duration::from_secs_f64(args.settle + args.hold),
                &args,
                &shared,
                "hold",
            );
            let s1 = sample(&args);
            report.idle_samples = Some((before, s0, s1));
            shared.stop.store(true, Ordering::Release);
        }
    }
    let results: Vec<WorkerResult> =
        handles.into_iter().map(|h| h.join().expect("worker thread panicked")).collect();
    if args.mode == Mode::Idle && args.server_pid.is_some() {
        // Let the server free what the connections held, then look again.
        std::thread::sleep(Duration::from_secs_f64(args.settle.min(2.0)));
        report.rss_after_close = sample(&args).server_rss;
    }
    report.collect(&results);
    if !args.quiet {
        print!("{}", report.table());
    }
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, report.json()) {
            eprintln!("loadgen: cannot write {path}: {e}");
        }
    }
    if let Some(e) = &report.first_error {
        eprintln!("loadgen: first error: {e}");
    }
    std::process::exit(if report.errors.total() > 0 { 1 } else { 0 });
}
