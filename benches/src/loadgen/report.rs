//! Aggregation of the workers' results and /proc samples; the human table and the JSON file.

use std::fmt::Write as _;
use std::time::Duration;

use super::args::{Args, Mode};
use super::hist::Histogram;
use super::procstat::{clk_tck, CpuTimes};
use super::worker::{Errors, FanCounts, WorkerResult, ZCounts};
use super::Sample;

#[derive(Debug)]
pub(crate) struct Report {
    args: Args,
    pub(crate) setup: Duration,
    pub(crate) window_samples: Option<(Sample, Sample)>,
    /// Idle: before connecting, after settling, at the end of the hold.
    pub(crate) idle_samples: Option<(Sample, Sample, Sample)>,
    pub(crate) rss_after_close: Option<u64>,
    hist: Histogram,
    msgs: u64,
    bytes: u64,
    window: f64,
    pub(crate) errors: Errors,
    opened: u64,
    open_at_end: u64,
    clean_closes: u64,
    pub(crate) first_error: Option<String>,
    fan: FanCounts,
    z: ZCounts,
    deflate_answer: Option<String>,
}

/// A CPU core's busy share over an interval, split.
#[derive(Debug, Clone, Copy)]
struct CoreUse {
    busy: f64,
    user: f64,
    system: f64,
    softirq: f64,
    irq: f64,
    /// Time the hypervisor ran something else while this CPU wanted to run (noise).
    steal: f64,
}

fn core_use(a: &Option<CpuTimes>, b: &Option<CpuTimes>) -> Option<CoreUse> {
    let d = b.as_ref()?.delta(a.as_ref()?);
    let t = d.total() as f64;
    if t == 0.0 {
        return None;
    }
    Some(CoreUse {
        busy: (t - d.idle as f64 - d.iowait as f64) / t,
        user: (d.user + d.nice) as f64 / t,
        system: d.system as f64 / t,
        softirq: d.softirq as f64 / t,
        irq: d.irq as f64 / t,
        steal: d.steal as f64 / t,
    })
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

struct Json(String);

impl Json {
    fn num(&mut self, k: &str, v: f64) {
        if v.is_finite() {
            let _ = write!(self.0, "\"{k}\":{v},");
        } else {
            let _ = write!(self.0, "\"{k}\":null,");
        }
    }
    fn int(&mut self, k: &str, v: u64) {
        let _ = write!(self.0, "\"{k}\":{v},");
    }
    fn opt(&mut self, k: &str, v: Option<f64>) {
        match v {
            Some(v) => self.num(k, v),
            None => {
                let _ = write!(self.0, "\"{k}\":null,");
            }
        }
    }
    fn str(&mut self, k: &str, v: &str) {
        let _ = write!(self.0, "\"{k}\":\"");
        for c in v.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        self.0.push_str("\",");
    }
    fn open(&mut self, k: &str) {
        let _ = write!(self.0, "\"{k}\":{{");
    }
    fn close(&mut self) {
        if self.0.ends_with(',') {
            self.0.pop();
        }
        self.0.push_str("},");
    }
    fn core(&mut self, k: &str, c: Option<CoreUse>) {
        match c {
            None => {
                let _ = write!(self.0, "\"{k}\":null,");
            }
            Some(c) => {
                self.open(k);
                self.num("busy", c.busy);
                self.num("user", c.user);
                self.num("system", c.system);
                self.num("softirq", c.softirq);
                self.num("irq", c.irq);
                self.num("steal", c.steal);
                self.close();
            }
        }
    }
}

impl Report {
    pub(crate) fn new(args: &Args) -> Report {
        Report {
            args: args.clone(),
            setup: Duration::ZERO,
            window_samples: None,
            idle_samples: None,
            rss_after_close: None,
            hist: Histogram::new(),
            msgs: 0,
            bytes: 0,
            window: 0.0,
            errors: Errors::default(),
            opened: 0,
            open_at_end: 0,
            clean_closes: 0,
            first_error: None,
            fan: FanCounts::default(),
            z: ZCounts::default(),
            deflate_answer: None,
        }
    }

    pub(crate) fn collect(&mut self, results: &[WorkerResult]) {
        let mut w = 0.0;
        for r in results {
            self.hist.merge(&r.hist);
            self.msgs += r.msgs;
            self.bytes += r.bytes;
            w += r.window.as_secs_f64();
            self.errors.add(&r.errors);
            self.opened += r.opened;
            self.open_at_end += r.open_at_end;
            self.clean_closes += r.clean_closes;
            self.fan.add(&r.fan);
            self.z.add(&r.z);
            if self.deflate_answer.is_none() {
                self.deflate_answer = r.deflate_answer.clone();
            }
            if self.first_error.is_none() {
                self.first_error = r.first_error.clone();
            }
        }
        self.window = if results.is_empty() { 0.0 } else { w / results.len() as f64 };
    }

    fn rate(&self, v: u64) -> f64 {
        if self.window > 0.0 {
            v as f64 / self.window
        } else {
            0.0
        }
    }

    /// (server CPU s, loadgen CPU s, wall s) over the measured window.
    fn cpu(&self) -> (Option<f64>, Option<f64>, f64) {
        match &self.window_samples {
            Some((a, b)) => {
                let wall = match (a.at, b.at) {
                    (Some(x), Some(y)) => (y - x).as_secs_f64(),
                    _ => 0.0,
                };
                (diff(a.server_cpu, b.server_cpu), diff(a.self_cpu, b.self_cpu), wall)
            }
            None => (None, None, 0.0),
        }
    }

    /// Machine-wide over the window: (busy core-s, softirq+irq core-s, other processes core-s =
    /// busy - server - loadgen). With tick-based accounting (this kernel) softirq time is
    /// charged to the process it interrupted, so it sits inside the server's and loadgen's
    /// times; "other" is what the rest of the machine (noise) took.
    fn machine(&self) -> Option<(f64, f64, f64)> {
        let (a, b) = self.window_samples.as_ref()?;
        let d = b.all_cores.as_ref()?.delta(a.all_cores.as_ref()?);
        let hz = clk_tck();
        let busy = d.busy() as f64 / hz;
        let soft = (d.softirq + d.irq) as f64 / hz;
        let (srv, own, _) = self.cpu();
        let other = busy - srv.unwrap_or(0.0) - own.unwrap_or(0.0);
        Some((busy, soft, other.max(0.0)))
    }

    /// Machine-wide steal over the window, core-s: time the hypervisor gave this VM's vCPUs
    /// to someone else while they had work (a noise figure; 0 on bare metal).
    fn steal(&self) -> Option<f64> {
        let (a, b) = self.window_samples.as_ref()?;
        let d = b.all_cores.as_ref()?.delta(a.all_cores.as_ref()?);
        Some(d.steal as f64 / clk_tck())
    }

    fn per_msg_us(&self, cpu: Option<f64>, wall: f64) -> Option<f64> {
        // Scale the message count to the sampling interval (they differ by a few ms).
        let msgs = self.rate(self.msgs) * wall;
        cpu.filter(|_| msgs > 0.0).map(|c| c * 1e6 / msgs)
    }

    fn rss(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        match &self.idle_samples {
            Some((a, b, c)) => (a.server_rss, b.server_rss, c.server_rss),
            None => (None, None, None),
        }
    }

    fn rss_per_conn(&self) -> Option<f64> {
        let (a, b, _) = self.rss();
        let (a, b) = (a?, b?);
        (self.opened > 0).then(|| (b as f64 - a as f64) / self.opened as f64)
    }

    pub(crate) fn table(&self) -> String {
        let a = &self.args;
        let mut s = String::new();
        let _ = writeln!(s, "\n== loadgen {} {} ==", a.mode.name(), a.url);
        let us = |v: u64| v as f64 / 1e3;
        let latency = |s: &mut String, name: &str| {
            let h = &self.hist;
            let _ = writeln!(
                s,
                "{:<28}p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (min {:.1}, mean {:.1}) µs",
                name,
                us(h.quantile(0.5)),
                us(h.quantile(0.9)),
                us(h.quantile(0.99)),
                us(h.quantile(0.999)),
                us(h.max()),
                us(h.min()),
                h.mean() / 1e3
            );
        };
        let per = if a.mode == Mode::Fanout { "delivered msg" } else { "msg" };
        match a.mode {
            Mode::Fanout => {
                let f = &self.fan;
                let _ = writeln!(
                    s,
                    "subscribers {}  publishers {}{}  size {} B (text)  {}  threads {}  window {:.2} s (warmup {} s)",
                    a.connections,
                    a.publishers,
                    if a.topics > 0 { format!("  topics {}", a.topics) } else { String::new() },
                    a.size,
                    if a.rate > 0.0 {
                        format!("rate {} msg/s per publisher", a.rate)
                    } else {
                        format!("closed loop, inflight {}", a.inflight)
                    },
                    a.threads,
                    self.window,
                    a.warmup
                );
                let published = self.rate(f.published);
                let delivered = self.rate(self.msgs);
                let _ = writeln!(s, "{:<28}{:>14.0}", "published msgs/s", published);
                let _ = writeln!(
                    s,
                    "{:<28}{:>14.0}  ({:.1} deliveries per message published)",
                    "delivered msgs/s",
                    delivered,
                    if published > 0.0 { delivered / published } else { 0.0 }
                );
                let _ = writeln!(
                    s,
                    "{:<28}{:>14.1} MB/s  (payload delivered to subscribers)",
                    "throughput",
                    self.rate(self.bytes) / 1e6
                );
                latency(&mut s, "fan-out latency");
                let _ = writeln!(
                    s,
                    "{:<28}{} over the run ({:.3} % of {} due), {} seen in the window; at publishers {}",
                    "lost (sequence gaps)",
                    f.lost,
                    100.0 * f.lost as f64 / (f.delivered_total + f.lost).max(1) as f64,
                    f.delivered_total + f.lost,
                    f.lost_window,
                    f.publisher_lost
                );
                if f.unsampled > 0 || f.stalls > 0 {
                    let _ = writeln!(
                        s,
                        "{:<28}{} deliveries without a latency sample (stamp reused); {} publisher stalls",
                        "notes",
                        f.unsampled,
                        f.stalls
                    );
                }
            }
            Mode::Echo | Mode::Raw => {
                let _ = writeln!(
                    s,
                    "connections {}  size {} B ({})  inflight {}  threads {}  window {:.2} s (warmup {} s)",
                    a.connections,
                    a.size,
                    if a.mode == Mode::Raw { "raw TCP" } else if a.text { "text" } else { "binary" },
                    a.inflight,
                    a.threads,
                    self.window,
                    a.warmup
                );
                let what =
                    if a.churn { "handshakes/s (--churn)" } else { "messages/s (round trips)" };
                let _ = writeln!(s, "{:<28}{:>14.0}", what, self.rate(self.msgs));
                let _ = writeln!(
                    s,
                    "{:<28}{:>14.1} MB/s  ({:.2} Gbit/s, payload, both directions)",
                    "throughput",
                    self.rate(self.bytes) / 1e6,
                    self.rate(self.bytes) * 8.0 / 1e9
                );
                latency(&mut s, "latency");
                if a.deflate {
                    let z = &self.z;
                    let _ = writeln!(
                        s,
                        "{:<28}{}  sent {}/{} compressed, {:.1} % of payload on the wire; echoes {}/{} compressed, {:.1} %",
                        "permessage-deflate",
                        self.deflate_answer.as_deref().unwrap_or("(not negotiated)"),
                        z.sent_compressed,
                        z.sent_msgs,
                        100.0 * z.sent_wire as f64 / (z.sent_msgs * a.size as u64).max(1) as f64,
                        z.recv_compressed,
                        z.recv_msgs,
                        100.0 * z.recv_wire as f64 / (z.recv_msgs * a.size as u64).max(1) as f64,
                    );
                }
            }
            Mode::Idle => {}
        }
        match a.mode {
            Mode::Echo | Mode::Raw | Mode::Fanout => {
                let (srv, own, wall) = self.cpu();
                if let Some(c) = srv {
                    let _ = writeln!(
                        s,
                        "{:<28}{:.2} s ({:.0} % of one core), {:.2} µs/{per}",
                        "server CPU",
                        c,
                        100.0 * c / wall,
                        self.per_msg_us(srv, wall).unwrap_or(0.0)
                    );
                }
                if let Some(c) = own {
                    let _ = writeln!(
                        s,
                        "{:<28}{:.2} s ({:.0} % of one core), {:.2} µs/{per}",
                        "loadgen CPU",
                        c,
                        100.0 * c / wall,
                        self.per_msg_us(own, wall).unwrap_or(0.0)
                    );
                }
                if let Some((busy, soft, other)) = self.machine() {
                    let _ = writeln!(
                        s,
                        "{:<28}busy {:.2} core-s (softirq+irq {:.2}, {:.2} µs/{per}); other processes {:.2} core-s; steal {:.2} core-s",
                        "machine (all cores)",
                        busy,
                        soft,
                        self.per_msg_us(Some(soft), wall).unwrap_or(0.0),
                        other,
                        self.steal().unwrap_or(0.0)
                    );
                }
                if let Some((x, y)) = &self.window_samples {
                    for (name, cu) in [
                        (
                            format!("cpu{} (server core)", a.server_cpu.unwrap_or(0)),
                            core_use(&x.server_core, &y.server_core),
                        ),
                        (
                            format!("cpu{} (loadgen core)", a.loadgen_cpu.unwrap_or(0)),
                            core_use(&x.loadgen_core, &y.loadgen_core),
                        ),
                    ] {
                        if let Some(c) = cu {
                            let _ = writeln!(
                                s,
                                "{:<28}busy {:.0} %  (user {:.0} %, sys {:.0} %, softirq {:.0} %, irq {:.0} %)",
                                name,
                                100.0 * c.busy,
                                100.0 * c.user,
                                100.0 * c.system,
                                100.0 * c.softirq,
                                100.0 * c.irq
                            );
                        }
                    }
                }
                if let (Mode::Fanout, Some((x, y))) = (a.mode, &self.window_samples) {
                    if let (Some(r0), Some(r1)) = (x.server_rss, y.server_rss) {
                        let _ = writeln!(
                            s,
                            "{:<28}{:.1} MiB at the start of the window, {:.1} MiB at the end",
                            "server RSS",
                            r0 as f64 / 1048576.0,
                            r1 as f64 / 1048576.0
                        );
                    }
                }
            }
            Mode::Idle => {
                let _ = writeln!(
                    s,
                    "connections {}  opened {}  open at end of hold {}  source addresses {}  threads {}",
                    a.connections, self.opened, self.open_at_end, a.src_addrs, a.threads
                );
                let _ = writeln!(
                    s,
                    "{:<28}{:.2} s",
                    "setup (connect+handshake)",
                    self.setup.as_secs_f64()
                );
                let (r0, r1, r2) = self.rss();
                let mib = |v: Option<u64>| {
                    v.map_or("-".to_string(), |v| format!("{:.1} MiB", v as f64 / 1048576.0))
                };
                let _ = writeln!(
                    s,
                    "{:<28}before {}  settled {}  end of hold {}  after close {}",
                    "server RSS",
                    mib(r0),
                    mib(r1),
                    mib(r2),
                    mib(self.rss_after_close)
                );
                if let Some(p) = self.rss_per_conn() {
                    let _ = writeln!(s, "{:<28}{:.0} bytes", "server RSS per connection", p);
                }
                if let Some((_, x, y)) = &self.idle_samples {
                    if let (Some(c), Some(t0), Some(t1)) =
                        (diff(x.server_cpu, y.server_cpu), x.at, y.at)
                    {
                        let _ = writeln!(
                            s,
                            "{:<28}{:.2} s over {:.1} s hold ({:.1} % of one core)",
                            "server CPU while idle",
                            c,
                            (t1 - t0).as_secs_f64(),
                            100.0 * c / (t1 - t0).as_secs_f64()
                        );
                    }
                }
                let _ = writeln!(s, "{:<28}{}", "clean closes", self.clean_closes);
            }
        }
        let e = &self.errors;
        let _ = writeln!(
            s,
            "{:<28}{}  (connect {}, handshake {}, io {}, mismatch {}, protocol {}, unexpected close {}, close timeout {}, order {}, wrong room {})",
            "errors",
            e.total(),
            e.connect,
            e.handshake,
            e.io,
            e.mismatch,
            e.protocol,
            e.unexpected_close,
            e.close_timeout,
            e.order,
            e.wrong_room
        );
        if a.mode != Mode::Idle {
            let _ = writeln!(
                s,
                "{:<28}{} opened, {} open at end of window, {} clean closes",
                "connections", self.opened, self.open_at_end, self.clean_closes
            );
        }
        s
    }

    pub(crate) fn json(&self) -> String {
        let a = &self.args;
        let mut j = Json(String::from("{"));
        j.str("mode", a.mode.name());
        j.str("url", &a.url);
        j.int("connections", a.connections as u64);
        j.int("threads", a.threads as u64);
        j.int("opened", self.opened);
        j.int("open_at_end", self.open_at_end);
        j.int("clean_closes", self.clean_closes);
        j.num("setup_s", self.setup.as_secs_f64());
        j.num("clk_tck", clk_tck());
        if a.mode != Mode::Idle {
            if a.mode == Mode::Fanout {
                let f = &self.fan;
                j.int("subscribers", a.connections as u64);
                j.int("publishers", a.publishers as u64);
                j.int("topics", a.topics as u64);
                j.num("rate_per_publisher", a.rate);
                j.int("published", f.published);
                j.int("published_total", f.published_total);
                j.num("published_per_s", self.rate(f.published));
                j.int("delivered", self.msgs);
                j.num("delivered_per_s", self.rate(self.msgs));
                j.int("delivered_total", f.delivered_total);
                j.int("lost", f.lost);
                j.int("lost_in_window", f.lost_window);
                j.int("lost_at_publishers", f.publisher_lost);
                j.int("latency_unsampled", f.unsampled);
                j.int("publisher_stalls", f.stalls);
                if let Some((x, y)) = &self.window_samples {
                    let f = |v: Option<u64>| v.map(|v| v as f64);
                    j.opt("server_rss_window_start", f(x.server_rss));
                    j.opt("server_rss_window_end", f(y.server_rss));
                }
            }
            j.int("size", a.size as u64);
            j.int("inflight", a.inflight as u64);
            j.str(
                "payload",
                if a.mode == Mode::Raw {
                    "raw"
                } else if a.text {
                    "text"
                } else {
                    "binary"
                },
            );
            j.num("warmup_s", a.warmup);
            j.num("window_s", self.window);
            j.int("messages", self.msgs);
            j.int("latency_samples", self.hist.count());
            j.num("messages_per_s", self.rate(self.msgs));
            j.num("bytes_per_s", self.rate(self.bytes));
            let h = &self.hist;
            j.open("latency_us");
            for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
                j.num(k, h.quantile(q) as f64 / 1e3);
            }
            j.num("min", h.min() as f64 / 1e3);
            j.num("max", h.max() as f64 / 1e3);
            j.num("mean", h.mean() / 1e3);
            j.close();
            let (srv, own, wall) = self.cpu();
            j.opt("server_cpu_s", srv);
            j.opt("server_cpu_us_per_msg", self.per_msg_us(srv, wall));
            j.opt("loadgen_cpu_s", own);
            j.opt("loadgen_cpu_us_per_msg", self.per_msg_us(own, wall));
            j.num("cpu_sample_wall_s", wall);
            if let Some((busy, soft, other)) = self.machine() {
                j.num("machine_busy_core_s", busy);
                j.num("machine_softirq_core_s", soft);
                j.opt("softirq_us_per_msg", self.per_msg_us(Some(soft), wall));
                j.num("other_processes_core_s", other);
            }
            j.opt("machine_steal_core_s", self.steal());
            if let Some((x, y)) = &self.window_samples {
                j.core("server_core", core_use(&x.server_core, &y.server_core));
                j.core("loadgen_core", core_use(&x.loadgen_core, &y.loadgen_core));
            }
        } else {
            j.int("src_addrs", u64::from(a.src_addrs));
            j.num("hold_s", a.hold);
            j.num("settle_s", a.settle);
            let (r0, r1, r2) = self.rss();
            let f = |v: Option<u64>| v.map(|v| v as f64);
            j.opt("server_rss_before", f(r0));
            j.opt("server_rss_settled", f(r1));
            j.opt("server_rss_end_of_hold", f(r2));
            j.opt("server_rss_after_close", f(self.rss_after_close));
            j.opt("server_rss_bytes_per_conn", self.rss_per_conn());
            if a.prime {
                j.int("primed_echoes", self.fan.delivered_total);
            }
            if let Some((_, x, y)) = &self.idle_samples {
                j.opt("server_cpu_idle_s", diff(x.server_cpu, y.server_cpu));
                j.opt("loadgen_cpu_idle_s", diff(x.self_cpu, y.self_cpu));
            }
        }
        if a.deflate {
            let z = &self.z;
            j.open("deflate");
            j.str("answer", self.deflate_answer.as_deref().unwrap_or(""));
            j.int("level", u64::from(a.deflate_level));
            j.int("sent_messages", z.sent_msgs);
            j.int("sent_compressed", z.sent_compressed);
            j.int("sent_wire_bytes", z.sent_wire);
            j.int("received_messages", z.recv_msgs);
            j.int("received_compressed", z.recv_compressed);
            j.int("received_wire_bytes", z.recv_wire);
            j.close();
        }
        let e = &self.errors;
        j.open("errors");
        j.int("total", e.total());
        j.int("connect", e.connect);
        j.int("handshake", e.handshake);
        j.int("io", e.io);
        j.int("mismatch", e.mismatch);
        j.int("protocol", e.protocol);
        j.int("unexpected_close", e.unexpected_close);
        j.int("close_timeout", e.close_timeout);
        j.int("order", e.order);
        j.int("wrong_room", e.wrong_room);
        j.close();
        if let Some(fe) = &self.first_error {
            j.str("first_error", fe);
        }
        let mut out = j.0;
        if out.ends_with(',') {
            out.pop();
        }
        out.push_str("}\n");
        out
    }
}
