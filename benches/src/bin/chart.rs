//! `chart`: turns the JSONL that `benches/compare.sh` writes into a markdown table and an SVG
//! chart, and appends one loadgen result to that JSONL (so the script needs no `jq`).
//!
//! ```text
//! chart --in results.jsonl [--svg out.svg] [--md out.md]    (no --md: the table goes to stdout)
//! chart append --to results.jsonl --from run.json [KEY=VALUE ...]
//! chart calibrate                                          (prints ms for a fixed CPU loop)
//! ```
//!
//! Each JSONL line is one loadgen `--json` object plus `server`, `load` and `round` (and
//! `noise_core_s`, `exit`, `failed`, added by `append`, and the noise figures compare.sh takes
//! before each run: `calib_ms`, `calib_loadgen_ms`, `loadavg`). Runs are grouped by (load,
//! server); for each the table gives the median over rounds, the best round (highest msg/s,
//! lowest CPU or memory) and the spread (min–max, and the interquartile range with 4+ rounds),
//! and a table of noise figures per round. It only reads and writes the files it is given and
//! runs nothing (`calibrate` times a loop of its own). The SVG is drawn with plotters' SVG
//! backend (one small bar chart per load and measure: bar = median, whisker = min–max, dot =
//! best); the aggregation and the markdown are this file's own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use plotters::coord::Shift;
use plotters::prelude::{
    ChartBuilder, Circle, Color, DrawingArea, DrawingAreaErrorKind, DrawingBackend, EmptyElement,
    FontDesc, FontFamily, FontStyle, FontTransform, IntoDrawingArea, IntoSegmentedCoord,
    LabelAreaPosition, PathElement, RGBColor, Rectangle, SVGBackend, SegmentValue, ShapeStyle,
    Text, TextStyle, TRANSPARENT, WHITE,
};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{Map, Value};

const HELP: &str = "\
chart: tables and an SVG chart from benches/compare.sh results

USAGE:
  chart --in FILE.jsonl [--svg OUT.svg] [--md OUT.md]
        aggregate by (load, server): median, best round and spread (min-max, IQR) over
        rounds, plus noise figures per round. Without --md the markdown goes to stdout.
  chart append --to FILE.jsonl --from RUN.json [KEY=VALUE ...]
        append RUN.json (one loadgen --json object) as one line with KEY=VALUE fields added
        (numbers stay numbers) and noise_core_s = machine busy - server - loadgen core-s.
        A missing or unreadable RUN.json appends a `failed: true` line instead. A one-line
        summary goes to stderr.
  chart calibrate [--iters N]
        time a fixed integer loop (default 2^24 dependent steps, ~20-40 ms on an idle
        core) and print the milliseconds: run under taskset on a core just before a run,
        it shows how much of that core the machine (host steal, other processes) is taking.
";

/// The servers and loads compare.sh knows, in the order tables and charts list them; anything
/// else found in the file follows in order of first appearance.
const SERVER_ORDER: &[&str] = &[
    "sockeye-epoll",
    "sockeye-io_uring",
    "tungstenite",
    "fastwebsockets",
    "tokio-websockets",
    "bun",
    "node",
    "uws",
    "raw",
];
const LOAD_ORDER: &[&str] = &[
    "echo-100x20",
    "echo-100x1k",
    "echo-10x64k",
    "echo-500x16k",
    "echo-1000x20",
    "echo-10kx20",
    "idle-10k",
    "idle-100k",
    "fanout-10k",
    "fanout-10k-4x8",
    "fanout-1k-16t",
    "deflate-100x1k",
    "deflate-10x64k",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("append") => append_cmd(&args[1..]),
        Some("calibrate") => calibrate_cmd(&args[1..]),
        _ => chart_cmd(&args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chart: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag_value<'a>(args: &'a [String], i: &mut usize) -> Result<&'a str, String> {
    let name = &args[*i];
    *i += 1;
    args.get(*i).map(String::as_str).ok_or_else(|| format!("{name} needs a value\n\n{HELP}"))
}

fn chart_cmd(args: &[String]) -> Result<(), String> {
    let (mut input, mut svg, mut md) = (None, None, None);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--in" => input = Some(flag_value(args, &mut i)?),
            "--svg" => svg = Some(flag_value(args, &mut i)?),
            "--md" => md = Some(flag_value(args, &mut i)?),
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n\n{HELP}")),
        }
        i += 1;
    }
    let input = input.ok_or_else(|| format!("--in is required\n\n{HELP}"))?;
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let runs = parse_jsonl(&text, input);
    if runs.is_empty() {
        return Err(format!("{input}: no runs"));
    }
    let summary = Summary::new(&runs);
    let source = std::path::Path::new(input)
        .file_name()
        .map_or_else(|| input.to_string(), |f| f.to_string_lossy().into_owned());
    let table = markdown(&summary, &source);
    match md {
        Some(path) => std::fs::write(path, &table).map_err(|e| format!("{path}: {e}"))?,
        None => print!("{table}"),
    }
    if let Some(path) = svg {
        std::fs::write(path, render_svg(&summary, &source)?).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// calibrate

/// `calibrate`: a fixed chain of dependent multiply-xorshift steps (no memory traffic, no
/// system call), timed; prints milliseconds with three decimals.
fn calibrate_cmd(args: &[String]) -> Result<(), String> {
    let mut iters: u64 = 1 << 24;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--iters" => {
                let v = flag_value(args, &mut i)?;
                iters = v.parse().map_err(|_| format!("--iters: not a number: {v:?}"))?;
            }
            other => return Err(format!("calibrate: unknown argument {other:?}\n\n{HELP}")),
        }
        i += 1;
    }
    let (ms, _) = calibrate(iters);
    println!("{ms:.3}");
    Ok(())
}

/// Runs `iters` steps; returns (milliseconds, the final state, so that nothing is elided).
fn calibrate(iters: u64) -> (f64, u64) {
    let t = std::time::Instant::now();
    let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..std::hint::black_box(iters) {
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (x >> 29);
    }
    let x = std::hint::black_box(x);
    (t.elapsed().as_secs_f64() * 1e3, x)
}

// ---------------------------------------------------------------------------------------------
// append

fn append_cmd(args: &[String]) -> Result<(), String> {
    let (mut to, mut from) = (None, None);
    let mut extra = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--to" => to = Some(flag_value(args, &mut i)?),
            "--from" => from = Some(flag_value(args, &mut i)?),
            kv if kv.contains('=') && !kv.starts_with('-') => {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                extra.push((k.to_string(), v.to_string()));
            }
            other => return Err(format!("append: unknown argument {other:?}\n\n{HELP}")),
        }
        i += 1;
    }
    let to = to.ok_or("append: --to is required")?;
    let from = from.ok_or("append: --from is required")?;
    let run =
        std::fs::read_to_string(from).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let line = annotate(run, &extra);
    eprintln!("  {}", one_line(&line));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(to)
        .map_err(|e| format!("{to}: {e}"))?;
    writeln!(f, "{}", Value::Object(line)).map_err(|e| format!("{to}: {e}"))
}

/// The loadgen object (or a `failed` stub when there is none) with the extra fields and the
/// noise estimate added.
fn annotate(run: Option<Value>, extra: &[(String, String)]) -> Map<String, Value> {
    let mut obj = match run {
        Some(Value::Object(m)) => m,
        _ => {
            let mut m = Map::new();
            m.insert("failed".into(), Value::Bool(true));
            m
        }
    };
    for (k, v) in extra {
        // Plain decimal numbers become JSON numbers; anything else (a git hash) stays a string.
        let value = match is_decimal(v).then(|| serde_json::from_str::<Value>(v).ok()).flatten() {
            Some(n) => n,
            None => match v.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" | "" => Value::Null,
                _ => Value::String(v.clone()),
            },
        };
        obj.insert(k.clone(), value);
    }
    let noise = match (
        num(&obj, "machine_busy_core_s"),
        num(&obj, "server_cpu_s"),
        num(&obj, "loadgen_cpu_s"),
    ) {
        (Some(busy), Some(srv), Some(own)) => Value::from(busy - srv - own),
        _ => Value::Null,
    };
    obj.insert("noise_core_s".into(), noise);
    obj
}

fn is_decimal(v: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let v = v.strip_prefix('-').unwrap_or(v);
    match v.split_once('.') {
        Some((a, b)) => digits(a) && digits(b),
        None => digits(v),
    }
}

/// What `append` says about a run on stderr.
fn one_line(o: &Map<String, Value>) -> String {
    let s = |k: &str| o.get(k).map_or_else(|| "?".to_string(), |v| v.to_string().replace('"', ""));
    let mut line = format!("round {} {} {}: ", s("round"), s("load"), s("server"));
    if o.get("failed").and_then(Value::as_bool) == Some(true) {
        line.push_str("FAILED (no result)");
        return line;
    }
    let run = Run::from_json(o);
    match run.kind {
        Kind::Idle => {
            let _ = write!(line, "{} bytes/conn", opt_fmt(run.rss_per_conn, 0));
        }
        Kind::Echo | Kind::Fanout => {
            let _ = write!(
                line,
                "{} msg/s, server {} µs/msg, p50 {} µs",
                opt_fmt(run.rate, 0),
                opt_fmt(run.server_us, 2),
                opt_fmt(run.p50, 0)
            );
        }
    }
    let _ = write!(line, ", errors {}", run.errors);
    if let Some(n) = run.noise {
        let _ = write!(line, ", noise {n:.2} core-s");
    }
    line
}

fn opt_fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| group_thousands(v, decimals))
}

// ---------------------------------------------------------------------------------------------
// reading

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Echo,
    Idle,
    Fanout,
}

impl Kind {
    fn of(load: &str, mode: &str) -> Kind {
        if load.starts_with("idle") || mode == "idle" {
            Kind::Idle
        } else if load.starts_with("fanout") || mode == "fanout" {
            Kind::Fanout
        } else {
            Kind::Echo
        }
    }
}

/// The numbers of one run that the table and chart use.
#[derive(Debug, Clone)]
struct Run {
    server: String,
    load: String,
    kind: Kind,
    failed: bool,
    /// Echo/raw: round trips/s. Fan-out: messages delivered/s.
    rate: Option<f64>,
    /// Server CPU µs per round trip (echo) or per delivered message (fan-out).
    server_us: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: u64,
    /// Of `errors`: closing handshakes unanswered within 3 s, after the window.
    close_timeouts: u64,
    /// Fan-out: deliveries that never arrived (counted apart from `errors`).
    lost: u64,
    /// Other processes' CPU over the window: machine busy − server − loadgen, core-s.
    noise: Option<f64>,
    /// Machine-wide steal over the window (core-s): the hypervisor running someone else.
    steal: Option<f64>,
    /// `chart calibrate` on the server's core (and on the loadgen's) just before the run, ms.
    calib_ms: Option<f64>,
    calib_loadgen_ms: Option<f64>,
    /// The 1-minute load average just before the run.
    loadavg: Option<f64>,
    /// The round the run belongs to (noise per round).
    round: Option<u64>,
    rss_per_conn: Option<f64>,
    opened: Option<f64>,
    setup_s: Option<f64>,
    idle_cpu_s: Option<f64>,
}

fn num(o: &Map<String, Value>, k: &str) -> Option<f64> {
    o.get(k).and_then(Value::as_f64).filter(|v| v.is_finite())
}

/// The first of `keys` present as a number (the fan-out mode's field names are not fixed yet).
fn first_num(o: &Map<String, Value>, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| num(o, k))
}

impl Run {
    fn from_json(o: &Map<String, Value>) -> Run {
        let text = |k: &str| match o.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        };
        let load = text("load");
        let kind = Kind::of(&load, &text("mode"));
        let latency = o.get("latency_us").and_then(Value::as_object);
        let lat = |k: &str| latency.and_then(|l| num(l, k));
        let errors = match o.get("errors") {
            Some(Value::Object(e)) => e.get("total").and_then(Value::as_u64).unwrap_or(0),
            Some(v) => v.as_u64().unwrap_or(0),
            None => 0,
        };
        let (rate, server_us) = match kind {
            Kind::Fanout => (
                first_num(
                    o,
                    &[
                        "delivered_per_s",
                        "deliveries_per_s",
                        "delivered_messages_per_s",
                        "messages_delivered_per_s",
                        "messages_per_s",
                    ],
                ),
                first_num(
                    o,
                    &[
                        "server_cpu_us_per_delivered",
                        "server_cpu_us_per_delivery",
                        "server_cpu_us_per_msg",
                    ],
                ),
            ),
            _ => (num(o, "messages_per_s"), num(o, "server_cpu_us_per_msg")),
        };
        Run {
            server: text("server"),
            load,
            kind,
            failed: o.get("failed").and_then(Value::as_bool).unwrap_or(false),
            rate,
            server_us,
            p50: lat("p50"),
            p99: lat("p99"),
            errors,
            close_timeouts: o
                .get("errors")
                .and_then(|e| e.get("close_timeout"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            lost: o.get("lost").and_then(Value::as_u64).unwrap_or(0),
            noise: num(o, "noise_core_s"),
            steal: num(o, "machine_steal_core_s"),
            calib_ms: num(o, "calib_ms"),
            calib_loadgen_ms: num(o, "calib_loadgen_ms"),
            loadavg: num(o, "loadavg"),
            round: o.get("round").and_then(Value::as_u64),
            rss_per_conn: num(o, "server_rss_bytes_per_conn"),
            opened: num(o, "opened"),
            setup_s: num(o, "setup_s"),
            idle_cpu_s: num(o, "server_cpu_idle_s"),
        }
    }
}

fn parse_jsonl(text: &str, name: &str) -> Vec<Run> {
    let mut runs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => {
                let r = Run::from_json(&o);
                if r.server.is_empty() || r.load.is_empty() {
                    eprintln!("chart: {name}:{}: no server/load field, skipped", n + 1);
                } else {
                    runs.push(r);
                }
            }
            _ => eprintln!("chart: {name}:{}: not a JSON object, skipped", n + 1),
        }
    }
    runs
}

// ---------------------------------------------------------------------------------------------
// aggregation

/// Median, quartiles and range over the rounds of one (load, server).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    /// First and third quartiles (linear interpolation between the sorted values).
    q1: f64,
    q3: f64,
    n: usize,
}

impl Stat {
    /// The best round: the highest value where higher is better, else the lowest.
    fn best(&self, higher: bool) -> f64 {
        if higher {
            self.max
        } else {
            self.min
        }
    }
}

/// The `q` quantile of sorted `v` (non-empty), interpolating linearly between ranks.
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Median (mean of the two middle values for an even count), quartiles, min and max; `None`
/// when empty.
fn stat(values: &[f64]) -> Option<Stat> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(Stat {
        median: quantile(&v, 0.5),
        min: v[0],
        max: v[n - 1],
        q1: quantile(&v, 0.25),
        q3: quantile(&v, 0.75),
        n,
    })
}

#[derive(Debug, Clone)]
struct Group {
    load: String,
    server: String,
    kind: Kind,
    runs: usize,
    failed: usize,
    errors: u64,
    close_timeouts: u64,
    lost: u64,
    rate: Option<Stat>,
    server_us: Option<Stat>,
    p50: Option<Stat>,
    p99: Option<Stat>,
    noise: Option<Stat>,
    steal: Option<Stat>,
    rss_per_conn: Option<Stat>,
    opened: Option<Stat>,
    setup_s: Option<Stat>,
    idle_cpu_s: Option<Stat>,
}

impl Group {
    /// The number this load compares servers on, and whether higher is better.
    fn headline(&self) -> (Option<Stat>, bool) {
        match self.kind {
            Kind::Idle => (self.rss_per_conn, false),
            Kind::Echo | Kind::Fanout => (self.rate, true),
        }
    }

    /// The headline's median and best round.
    fn headline_values(&self) -> Option<(f64, f64)> {
        let (st, higher) = self.headline();
        st.map(|s| (s.median, s.best(higher)))
    }
}

fn is_sockeye(server: &str) -> bool {
    server.starts_with("sockeye")
}

/// Sorts names by a preferred order, unknown names after, in order of first appearance.
fn ordered(seen: Vec<String>, preferred: &[&str]) -> Vec<String> {
    let rank = |s: &str| preferred.iter().position(|p| *p == s).unwrap_or(preferred.len());
    let mut v: Vec<(usize, usize, String)> =
        seen.into_iter().enumerate().map(|(i, s)| (rank(&s), i, s)).collect();
    v.sort();
    v.into_iter().map(|(_, _, s)| s).collect()
}

#[derive(Debug)]
struct Summary {
    loads: Vec<String>,
    servers: Vec<String>,
    /// (load, server) in table order.
    groups: Vec<Group>,
    rounds: usize,
    /// Noise figures per round, in round order.
    by_round: Vec<RoundNoise>,
    /// Sockeye ÷ each peer within each round (echo and fan-out loads).
    paired: Vec<Paired>,
}

/// One Sockeye backend against one peer on one load, round by round: the ratio of the two
/// runs of each round where both ran cleanly. A round's runs are back to back, so a slow
/// stretch of a shared machine that hits one hits the other too; the ratio of medians,
/// taken over different rounds, does not cancel it.
#[derive(Debug)]
struct Paired {
    load: String,
    sockeye: String,
    peer: String,
    /// msg/s (deliveries/s): Sockeye ÷ peer.
    rate: Option<Stat>,
    /// Server CPU per message: Sockeye ÷ peer.
    cpu: Option<Stat>,
}

impl Paired {
    fn collect(runs: &[Run], groups: &[Group]) -> Vec<Paired> {
        let mut out = Vec::new();
        for s in groups.iter().filter(|g| is_sockeye(&g.server) && ranked(g)) {
            if s.kind == Kind::Idle {
                continue;
            }
            for p in groups.iter().filter(|p| p.load == s.load && !is_sockeye(&p.server)) {
                if !ranked(p) {
                    continue;
                }
                let round_of = |server: &str| -> BTreeMap<u64, &Run> {
                    runs.iter()
                        .filter(|r| r.load == s.load && r.server == server && !r.failed)
                        .filter_map(|r| Some((r.round?, r)))
                        .collect()
                };
                let (mine, theirs) = (round_of(&s.server), round_of(&p.server));
                let ratios = |f: fn(&Run) -> Option<f64>| -> Vec<f64> {
                    mine.iter()
                        .filter_map(|(k, a)| {
                            let (x, y) = (f(a)?, f(theirs.get(k)?)?);
                            (y > 0.0).then(|| x / y)
                        })
                        .collect()
                };
                out.push(Paired {
                    load: s.load.clone(),
                    sockeye: s.server.clone(),
                    peer: p.server.clone(),
                    rate: stat(&ratios(|r| r.rate)),
                    cpu: stat(&ratios(|r| r.server_us)),
                });
            }
        }
        out
    }
}

/// The noise figures of one round, over all its runs.
#[derive(Debug)]
struct RoundNoise {
    round: u64,
    runs: usize,
    calib_ms: Option<Stat>,
    calib_loadgen_ms: Option<Stat>,
    loadavg: Option<Stat>,
    steal: Option<Stat>,
    noise: Option<Stat>,
}

impl RoundNoise {
    fn collect(runs: &[Run]) -> Vec<RoundNoise> {
        let mut by: BTreeMap<u64, Vec<&Run>> = BTreeMap::new();
        for r in runs.iter().filter(|r| !r.failed) {
            if let Some(round) = r.round {
                by.entry(round).or_default().push(r);
            }
        }
        by.into_iter()
            .map(|(round, rs)| {
                let st = |f: fn(&Run) -> Option<f64>| {
                    stat(&rs.iter().filter_map(|r| f(r)).collect::<Vec<f64>>())
                };
                RoundNoise {
                    round,
                    runs: rs.len(),
                    calib_ms: st(|r| r.calib_ms),
                    calib_loadgen_ms: st(|r| r.calib_loadgen_ms),
                    loadavg: st(|r| r.loadavg),
                    steal: st(|r| r.steal),
                    noise: st(|r| r.noise),
                }
            })
            .collect()
    }
}

impl Summary {
    fn new(runs: &[Run]) -> Summary {
        let mut loads_seen = Vec::new();
        let mut servers_seen = Vec::new();
        let mut by: BTreeMap<(String, String), Vec<&Run>> = BTreeMap::new();
        for r in runs {
            if !loads_seen.contains(&r.load) {
                loads_seen.push(r.load.clone());
            }
            if !servers_seen.contains(&r.server) {
                servers_seen.push(r.server.clone());
            }
            by.entry((r.load.clone(), r.server.clone())).or_default().push(r);
        }
        let loads = ordered(loads_seen, LOAD_ORDER);
        let servers = ordered(servers_seen, SERVER_ORDER);
        let mut groups = Vec::new();
        let mut rounds = 0;
        for l in &loads {
            for s in &servers {
                let Some(rs) = by.get(&(l.clone(), s.clone())) else { continue };
                let ok: Vec<&&Run> = rs.iter().filter(|r| !r.failed).collect();
                let st = |f: fn(&Run) -> Option<f64>| {
                    stat(&ok.iter().filter_map(|r| f(r)).collect::<Vec<f64>>())
                };
                rounds = rounds.max(rs.len());
                groups.push(Group {
                    load: l.clone(),
                    server: s.clone(),
                    kind: rs[0].kind,
                    runs: rs.len(),
                    failed: rs.len() - ok.len(),
                    errors: rs.iter().map(|r| r.errors).sum(),
                    close_timeouts: rs.iter().map(|r| r.close_timeouts).sum(),
                    lost: rs.iter().map(|r| r.lost).sum(),
                    rate: st(|r| r.rate),
                    server_us: st(|r| r.server_us),
                    p50: st(|r| r.p50),
                    p99: st(|r| r.p99),
                    noise: st(|r| r.noise),
                    steal: st(|r| r.steal),
                    rss_per_conn: st(|r| r.rss_per_conn),
                    opened: st(|r| r.opened),
                    setup_s: st(|r| r.setup_s),
                    idle_cpu_s: st(|r| r.idle_cpu_s),
                });
            }
        }
        let paired = Paired::collect(runs, &groups);
        Summary { loads, servers, groups, rounds, by_round: RoundNoise::collect(runs), paired }
    }

    fn load_groups(&self, load: &str) -> Vec<&Group> {
        self.groups.iter().filter(|g| g.load == load).collect()
    }

    fn loads_of(&self, kind: Kind) -> Vec<&String> {
        self.loads
            .iter()
            .filter(|l| self.groups.iter().any(|g| &g.load == *l && g.kind == kind))
            .collect()
    }
}

/// Sockeye's best headline for a load over its backends (max msg/s, min bytes/conn): the best
/// of the backends' medians, and the best of their best rounds; backends with errors on this
/// load are left out (see [`ranked`]).
fn sockeye_best(groups: &[&Group]) -> Option<(f64, f64)> {
    let higher = groups.first().is_none_or(|g| g.headline().1);
    let pick = |a: f64, b: f64| if higher { a.max(b) } else { a.min(b) };
    groups
        .iter()
        .filter(|g| is_sockeye(&g.server) && ranked(g))
        .filter_map(|g| g.headline_values())
        .reduce(|(m, b), (m2, b2)| (pick(m, m2), pick(b, b2)))
}

/// Whether a group takes part in the ratios: a server that counted errors on a load (wrong
/// bytes, wrong room, connections lost or refused...) did not do the same work as the others,
/// so its msg/s ranks nothing. Two kinds do not count: closing handshakes unanswered within
/// 3 s (they happen after the window, whose numbers they do not touch; a fan-out server
/// still flushing a backlog to 10,000 subscribers can take that long), and fan-out losses (a
/// server may drop for slow consumers). Both are shown in their own columns.
fn ranked(g: &Group) -> bool {
    g.errors == g.close_timeouts
}

/// The ratio cell of one row, on the headline number (msg/s, or bytes/connection for idle
/// loads), medians first and best rounds in brackets: for a Sockeye row, this row ÷ each peer;
/// for a peer row, Sockeye-best ÷ this row. Rows with errors are not ranked.
fn ratio_cell(g: &Group, all: &[&Group]) -> String {
    if !ranked(g) {
        return "not ranked (errors)".to_string();
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
    let both = |(m, b): (f64, f64), (pm, pb): (f64, f64)| -> Option<String> {
        let rm = ratio(m, pm)?;
        Some(match ratio(b, pb) {
            Some(rb) => format!("{rm:.2} (best {rb:.2})"),
            None => format!("{rm:.2}"),
        })
    };
    let Some(mine) = g.headline_values() else { return String::new() };
    if is_sockeye(&g.server) {
        all.iter()
            .filter(|p| !is_sockeye(&p.server) && ranked(p))
            .filter_map(|p| Some(format!("{} {}", p.server, both(mine, p.headline_values()?)?)))
            .collect::<Vec<_>>()
            .join(" · ")
    } else {
        match sockeye_best(all).and_then(|b| both(b, mine)) {
            Some(r) => format!("Sockeye-best {r}"),
            None => String::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// formatting

/// `1234567.8` → `1,234,568` (decimals 0) / `1,234,567.80` (decimals 2).
fn group_thousands(v: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(a, b)| (a, b));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    if v < 0.0 && out.chars().any(|c| c != '0' && c != ',' && c != '.') {
        out.insert(0, '-');
    }
    out
}

/// Three significant digits with k/M/G: `152345` → `152k`, `1049000` → `1.05M`, `6.734` → `6.73`.
fn compact(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let ax = x.abs();
    if ax == 0.0 {
        return "0".to_string();
    }
    let s = if ax >= 100.0 || (suffix.is_empty() && ax >= 1000.0) {
        format!("{x:.0}")
    } else if ax >= 10.0 {
        format!("{x:.1}")
    } else if ax >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    };
    let s = if s.contains('.') && !suffix.is_empty() {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{suffix}")
}

/// An axis label: `compact` without trailing zeros (`5`, `2.5`, `150k`).
fn tick_label(v: f64) -> String {
    let s = compact(v);
    let (num, suffix) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    if num.contains('.') {
        format!("{}{suffix}", num.trim_end_matches('0').trim_end_matches('.'))
    } else {
        s
    }
}

fn med_cell(s: Option<Stat>, decimals: usize) -> String {
    s.map_or_else(|| "–".to_string(), |s| group_thousands(s.median, decimals))
}

/// The best round's value, in full.
fn best_cell(s: Option<Stat>, higher: bool, decimals: usize) -> String {
    s.map_or_else(|| "–".to_string(), |s| group_thousands(s.best(higher), decimals))
}

/// The spread over rounds, compact: `144k–158k`, and the interquartile range where there are
/// four rounds or more (`144k–158k, IQR 150k–155k`); `–` for one round.
fn spread_cell(s: Option<Stat>) -> String {
    match s {
        Some(s) if s.n > 1 => {
            let mut out = format!("{}–{}", compact(s.min), compact(s.max));
            if s.n >= 4 {
                let _ = write!(out, ", IQR {}–{}", compact(s.q1), compact(s.q3));
            }
            out
        }
        _ => "–".to_string(),
    }
}

/// Max over rounds, two decimals.
fn max_cell(s: Option<Stat>) -> String {
    s.map_or_else(|| "–".to_string(), |s| format!("{:.2}", s.max))
}

/// `median (min–max)` with two decimals, for the noise table.
fn noise_cell(s: Option<Stat>) -> String {
    match s {
        None => "–".to_string(),
        Some(s) if s.n == 1 || s.min == s.max => format!("{:.2}", s.median),
        Some(s) => format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
    }
}

/// Errors summed over rounds, with failed runs (no result at all) and fan-out losses.
fn errors_cell(g: &Group) -> String {
    let mut s = g.errors.to_string();
    if g.lost > 0 {
        let _ = write!(s, " (lost {})", g.lost);
    }
    if g.failed > 0 {
        let _ = write!(s, " (+{} failed runs)", g.failed);
    }
    s
}

/// Fan-out: the loadgen's parameters in a load name past the subscriber count: `-PxK`
/// (P publishers, K in flight each) and `-Nt` (N topics).
fn fanout_shape(rest: &str) -> (Option<u64>, Vec<String>) {
    fn count(s: &str) -> Option<u64> {
        match s.strip_suffix('k') {
            Some(n) => n.parse::<u64>().ok().map(|n| n * 1000),
            None => s.parse().ok(),
        }
    }
    let mut parts = rest.split('-');
    let subs = parts.next().and_then(count);
    let mut extra = Vec::new();
    for p in parts {
        if let Some((pubs, k)) = p.split_once('x') {
            extra.push(format!("{pubs} publishers × {k} in flight"));
        } else if let Some(t) = p.strip_suffix('t') {
            extra.push(format!("{t} topics"));
        } else {
            extra.push(p.to_string());
        }
    }
    (subs, extra)
}

/// `echo-100x1k` → `100 conns × 1 KiB`; `idle-10k` → `10,000 idle conns`; `fanout-10k` →
/// `10,000 subscribers`; `fanout-1k-16t` → `1,000 subscribers, 16 topics`. Unknown shapes come
/// back as they are.
fn describe(load: &str) -> String {
    fn count(s: &str) -> Option<u64> {
        match s.strip_suffix('k') {
            Some(n) => n.parse::<u64>().ok().map(|n| n * 1000),
            None => s.parse().ok(),
        }
    }
    fn size(s: &str) -> Option<String> {
        match s.strip_suffix('k') {
            Some(n) => n.parse::<u64>().ok().map(|n| format!("{n} KiB")),
            None => s.parse::<u64>().ok().map(|n| format!("{n} B")),
        }
    }
    let (kind, rest) = load.split_once('-').unwrap_or((load, ""));
    let out = match kind {
        "echo" => rest.split_once('x').and_then(|(c, s)| {
            Some(format!("{} conns × {}", group_thousands(count(c)? as f64, 0), size(s)?))
        }),
        "deflate" => rest.split_once('x').and_then(|(c, s)| {
            Some(format!(
                "{} conns × {} JSON, permessage-deflate",
                group_thousands(count(c)? as f64, 0),
                size(s)?
            ))
        }),
        "idle" => count(rest).map(|c| format!("{} idle conns", group_thousands(c as f64, 0))),
        "fanout" => {
            let (subs, extra) = fanout_shape(rest);
            subs.map(|c| {
                let mut d = format!("{} subscribers", group_thousands(c as f64, 0));
                for e in extra {
                    d.push_str(", ");
                    d.push_str(&e);
                }
                d
            })
        }
        _ => None,
    };
    out.unwrap_or_else(|| load.to_string())
}

// ---------------------------------------------------------------------------------------------
// markdown

fn markdown(sum: &Summary, source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Results from `{source}`: {} server(s), {} load(s), up to {} round(s) each, the servers \
         interleaved within every round. For each load and server: the **median** over rounds, \
         the **best** round (highest msg/s; lowest server CPU or memory), and the spread \
         (min–max, and the interquartile range with 4+ rounds). Ratios compare medians, best \
         rounds in brackets: a Sockeye row shows Sockeye ÷ each peer, a peer row Sockeye-best \
         ÷ that peer (msg/s: > 1 means Sockeye is faster; bytes/conn: < 1 means Sockeye uses \
         less); a server that counted errors on a load (other than closes unanswered after \
         the window) is not ranked on it. Noise = other processes' CPU during the window (machine busy − server − \
         loadgen) / hypervisor steal, core-s, max over rounds; per round in the last table.\n",
        sum.servers.len(),
        sum.loads.len(),
        sum.rounds
    );
    let noise_pair = |g: &Group| format!("{} / {}", max_cell(g.noise), max_cell(g.steal));
    for (kind, title) in [
        (Kind::Echo, "Echo (round trips; K = 1 in flight per connection)"),
        (
            Kind::Fanout,
            "Fan-out (publishers → every subscriber of their room on /chat; closed loop)",
        ),
        (Kind::Idle, "Idle connections (server RSS growth per handshaken connection)"),
    ] {
        let loads = sum.loads_of(kind);
        if loads.is_empty() {
            continue;
        }
        let _ = writeln!(s, "### {title}\n");
        match kind {
            Kind::Echo | Kind::Fanout => {
                let (rate, us, lost) = if kind == Kind::Echo {
                    ("msg/s", "server µs/msg", "")
                } else {
                    ("deliveries/s", "server µs/delivery", " lost |")
                };
                let _ = writeln!(
                    s,
                    "| load | server | {rate} median | best | spread | {us} median | best | spread | p50 / p99 µs | errors |{lost} noise | ratio (msg/s) |"
                );
                let _ = writeln!(
                    s,
                    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|{}--:|---|",
                    if kind == Kind::Fanout { "--:|" } else { "" }
                );
                for l in loads {
                    let gs = sum.load_groups(l);
                    for g in &gs {
                        let lost = if kind == Kind::Fanout {
                            format!(" {} |", group_thousands(g.lost as f64, 0))
                        } else {
                            String::new()
                        };
                        let mut errors = group_thousands(g.errors as f64, 0);
                        if g.close_timeouts > 0 {
                            let _ = write!(
                                errors,
                                " ({} close timeouts)",
                                group_thousands(g.close_timeouts as f64, 0)
                            );
                        }
                        if g.failed > 0 {
                            let _ = write!(errors, " (+{} failed runs)", g.failed);
                        }
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |{} {} | {} |",
                            l,
                            g.server,
                            med_cell(g.rate, 0),
                            best_cell(g.rate, true, 0),
                            spread_cell(g.rate),
                            med_cell(g.server_us, 2),
                            best_cell(g.server_us, false, 2),
                            spread_cell(g.server_us),
                            med_cell(g.p50, 0),
                            med_cell(g.p99, 0),
                            errors,
                            lost,
                            noise_pair(g),
                            ratio_cell(g, &gs)
                        );
                    }
                }
            }
            Kind::Idle => {
                let _ = writeln!(
                    s,
                    "| load | server | RSS bytes/conn median | best | spread | opened | connect+handshake s | server CPU s over the hold | errors | ratio (bytes/conn) |"
                );
                let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|--:|---|");
                for l in loads {
                    let gs = sum.load_groups(l);
                    for g in &gs {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                            l,
                            g.server,
                            med_cell(g.rss_per_conn, 0),
                            best_cell(g.rss_per_conn, false, 0),
                            spread_cell(g.rss_per_conn),
                            med_cell(g.opened, 0),
                            med_cell(g.setup_s, 2),
                            med_cell(g.idle_cpu_s, 2),
                            errors_cell(g),
                            ratio_cell(g, &gs)
                        );
                    }
                }
            }
        }
        s.push('\n');
    }
    if sum.paired.iter().any(|p| p.rate.is_some()) {
        let _ = writeln!(
            s,
            "### Paired by round\n\nSockeye ÷ each peer within each round (both runs of a round \
             are back to back, so what slowed a round slowed both): the median over rounds, \
             the range in brackets. msg/s (deliveries/s for fan-out): > 1 means Sockeye is \
             faster; server CPU per message: < 1 means Sockeye spends less.\n"
        );
        let _ = writeln!(s, "| load | Sockeye | peer | rounds | msg/s ratio | server CPU ratio |");
        let _ = writeln!(s, "|---|---|---|--:|--:|--:|");
        let cell = |st: Option<Stat>| match st {
            Some(st) if st.n > 1 => format!("{:.2} ({:.2}–{:.2})", st.median, st.min, st.max),
            Some(st) => format!("{:.2}", st.median),
            None => "–".to_string(),
        };
        for p in &sum.paired {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                p.load,
                p.sockeye,
                p.peer,
                p.rate.map_or(0, |st| st.n),
                cell(p.rate),
                cell(p.cpu)
            );
        }
        s.push('\n');
    }
    let any_noise = sum.by_round.iter().any(|r| {
        [r.calib_ms, r.calib_loadgen_ms, r.loadavg, r.steal, r.noise].iter().any(Option::is_some)
    });
    if any_noise {
        let _ = writeln!(
            s,
            "### Noise per round\n\n`chart calibrate` (a fixed CPU loop) timed on the server's and \
             the loadgen's core just before each run, the 1-minute load average then, and over \
             each run's window the hypervisor's steal and other processes' CPU (core-s): \
             median (min–max) over the round's runs. A round whose calibration is slower than \
             the others, or with steal or other processes' CPU, ran on a busier machine.\n"
        );
        let _ = writeln!(
            s,
            "| round | runs | calibration ms, server core | calibration ms, loadgen core | load average | steal core-s | other processes core-s |"
        );
        let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|--:|");
        for r in &sum.by_round {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.round,
                r.runs,
                noise_cell(r.calib_ms),
                noise_cell(r.calib_loadgen_ms),
                noise_cell(r.loadavg),
                noise_cell(r.steal),
                noise_cell(r.noise)
            );
        }
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// SVG, drawn with plotters' SVG backend. Text goes into the SVG as `<text>` for the viewer to
// set; plotters is built without a font feature, so nothing here reads a font file (its layout
// estimates are only used for the legend's spacing).

const WIDTH: u32 = 1200;
const MARGIN: i32 = 28;
const CELL_H: i32 = 300;
/// Above a cell's plot: its title and subtitle.
const PLOT_TOP: i32 = 44;
/// Below a cell's plot: the server names, turned upright.
const PLOT_BOTTOM: i32 = 96;
const AXIS_W: i32 = 52;
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

fn colour(server: &str, index: usize) -> RGBColor {
    match server {
        "sockeye-epoll" => RGBColor(0x1f, 0x4e, 0x9c),
        "sockeye-io_uring" => RGBColor(0x4f, 0x9b, 0xe8),
        "tungstenite" => RGBColor(0xe0, 0x7b, 0x24),
        "fastwebsockets" => RGBColor(0x2f, 0x9e, 0x50),
        "tokio-websockets" => RGBColor(0x9b, 0x59, 0xc5),
        "bun" => RGBColor(0xc9, 0xa2, 0x27),
        "uws" => RGBColor(0x16, 0xa3, 0xa3),
        "node" => RGBColor(0x5f, 0x8f, 0x3e),
        "raw" => RGBColor(0x8a, 0x8a, 0x8a),
        _ => [
            RGBColor(0xc0, 0x39, 0x2b),
            RGBColor(0xb8, 0xa0, 0x00),
            RGBColor(0x16, 0xa3, 0xa3),
            RGBColor(0x7f, 0x55, 0x39),
            RGBColor(0xd3, 0x5f, 0xa0),
        ][index % 5],
    }
}

const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
const RED: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
const GREY: [RGBColor; 5] = [
    RGBColor(0x33, 0x33, 0x33),
    RGBColor(0x55, 0x55, 0x55),
    RGBColor(0x66, 0x66, 0x66),
    RGBColor(0x77, 0x77, 0x77),
    RGBColor(0x99, 0x99, 0x99),
];

/// Text of `px` pixels (plotters' SVG backend writes `font-size` as size ÷ 1.24), anchored at
/// `h` horizontally and `v` vertically.
fn font(px: f64, bold: bool, fill: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    let style = if bold { FontStyle::Bold } else { FontStyle::Normal };
    TextStyle {
        font: FontDesc::new(FontFamily::Name(FONT), px * 1.24, style),
        color: fill.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// Axis ticks: a 1/2/5 × 10ⁿ step giving about four intervals up to at least `max`.
fn nice_ticks(max: f64) -> (f64, Vec<f64>) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, vec![0.0, 1.0]);
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let top = (max / step).ceil() * step;
    let n = (top / step).round() as usize;
    (top, (0..=n).map(|i| i as f64 * step).collect())
}

/// One small bar chart: one bar per server (in `servers` order, gaps where a server has no
/// data for this load), median height, min–max whisker, a dot at the best round, the median
/// on top and the best round's value above it.
#[derive(Debug)]
struct Cell<'a> {
    title: String,
    subtitle: String,
    bars: Vec<Bar<'a>>,
}

#[derive(Debug)]
struct Bar<'a> {
    server: &'a str,
    stat: Option<Stat>,
    /// Whether higher is better (the best round is the max) or lower (the min).
    higher: bool,
    /// No round produced a result.
    failed: bool,
    /// Some round had more than `NOISY` core-s of other processes (or of steal) in its window.
    noisy: bool,
    /// Errors (or fan-out losses) counted over the rounds.
    errors: bool,
}

/// Other processes' CPU, or steal, in a window (core-s) above which a run is marked noisy (`*`).
const NOISY: f64 = 0.5;

type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_cell<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    cell: &Cell<'_>,
    servers: &[String],
) -> Drawn<DB> {
    let (w, _) = area.dim_in_pixel();
    let mid = w as i32 / 2;
    area.draw(&Text::new(
        cell.title.as_str(),
        (mid, 11),
        font(14.0, true, INK, HPos::Center, VPos::Center),
    ))?;
    area.draw(&Text::new(
        cell.subtitle.as_str(),
        (mid, 27),
        font(11.0, false, GREY[2], HPos::Center, VPos::Center),
    ))?;

    let max =
        cell.bars.iter().filter_map(|b| b.stat.map(|s| s.max.max(s.median))).fold(0.0, f64::max);
    // Headroom for the value printed above the tallest whisker.
    let (top, ticks) = nice_ticks(max * 1.15);
    let n = servers.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .margin_top(PLOT_TOP)
        .margin_right(14)
        .y_label_area_size(AXIS_W)
        .x_label_area_size(PLOT_BOTTOM)
        // One segment per server: the range is inclusive.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .set_tick_mark_size(LabelAreaPosition::Bottom, 0)
        .y_labels(ticks.len())
        .y_label_formatter(&|v| tick_label(*v))
        .y_label_style(font(11.0, false, GREY[1], HPos::Right, VPos::Center))
        .x_label_formatter(&|_| String::new())
        .bold_line_style(RGBColor(0xe3, 0xe3, 0xe3))
        .light_line_style(TRANSPARENT)
        .axis_style(RGBColor(0x44, 0x44, 0x44))
        .draw()?;

    let slot = chart.plotting_area().dim_in_pixel().0 as f64 / n as f64;
    let bar_w = (slot * 0.72).min(56.0);
    let side = ((slot - bar_w) / 2.0).round().max(0.0) as u32;
    let cap = (bar_w * 0.3).min(7.0).round() as i32;
    let whisker = ShapeStyle::from(&INK).stroke_width(1);
    let value_px = if slot < 42.0 { 10.0 } else { 11.5 };
    for (i, server) in servers.iter().enumerate() {
        let at = |v: f64| (SegmentValue::CenterOf(i), v);
        let bar = cell.bars.iter().find(|b| b.server == server);
        match bar.and_then(|b| b.stat) {
            Some(st) => {
                let mut rect = Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), st.median)],
                    colour(server, i).filled(),
                );
                rect.set_margin(0, 0, side, side);
                chart.draw_series([rect])?;
                let mut label_at = st.median;
                let higher = bar.is_none_or(|b| b.higher);
                if st.n > 1 && st.max > st.min {
                    chart.draw_series([
                        EmptyElement::at(at(st.min))
                            + PathElement::new(vec![(-cap, 0), (cap, 0)], whisker),
                        EmptyElement::at(at(st.max))
                            + PathElement::new(vec![(-cap, 0), (cap, 0)], whisker),
                    ])?;
                    chart.draw_series([PathElement::new(vec![at(st.min), at(st.max)], whisker)])?;
                    label_at = label_at.max(st.max);
                }
                if st.n > 1 {
                    // The best round: a dot on the whisker's end, its value above the median's.
                    chart.draw_series([EmptyElement::at(at(st.best(higher)))
                        + Circle::new((0, 0), 3, INK.filled())])?;
                    let style = font(9.0, false, GREY[2], HPos::Center, VPos::Bottom);
                    chart.draw_series([EmptyElement::at(at(label_at))
                        + Text::new(
                            format!("best {}", compact(st.best(higher))),
                            (0, -4 - value_px as i32 - 2),
                            style,
                        )])?;
                }
                let errors = bar.is_some_and(|b| b.errors);
                let label = format!(
                    "{}{}{}",
                    compact(st.median),
                    if bar.is_some_and(|b| b.noisy) { "*" } else { "" },
                    if errors { " !" } else { "" }
                );
                let style = font(
                    value_px,
                    true,
                    if errors { RED } else { INK },
                    HPos::Center,
                    VPos::Bottom,
                );
                chart.draw_series([
                    EmptyElement::at(at(label_at)) + Text::new(label, (0, -3), style)
                ])?;
            }
            None => {
                let failed = bar.is_some_and(|b| b.failed);
                let (label, fill) = if failed { ("failed", RED) } else { ("n/a", GREY[4]) };
                let style = font(10.0, false, fill, HPos::Center, VPos::Bottom);
                chart
                    .draw_series([EmptyElement::at(at(0.0)) + Text::new(label, (0, -4), style)])?;
            }
        }
        // Server name under its bar, upright, ending at the axis.
        let style = font(10.0, false, GREY[0], HPos::Right, VPos::Center)
            .transform(FontTransform::Rotate270);
        chart
            .draw_series([EmptyElement::at(at(0.0))
                + Text::new(short_name(server).to_string(), (0, 6), style)])?;
    }
    Ok(())
}

fn short_name(server: &str) -> &str {
    match server {
        "sockeye-epoll" => "sockeye epoll",
        "sockeye-io_uring" => "sockeye io_uring",
        "tokio-websockets" => "tokio-ws",
        "fastwebsockets" => "fastws",
        "uws" => "uWS",
        s => s,
    }
}

/// The chart's panels, each a title and its cells: echo msg/s, echo server CPU per message,
/// fan-out deliveries/s, fan-out server CPU per delivery, idle memory.
fn panels(sum: &Summary) -> Vec<(String, Vec<Cell<'_>>)> {
    type Pick = fn(&Group) -> Option<Stat>;
    let cells = |loads: &[&String], pick: Pick, higher: bool, unit: &str| -> Vec<Cell<'_>> {
        loads
            .iter()
            .map(|l| Cell {
                title: describe(l),
                subtitle: format!("{l} · {unit}"),
                bars: sum
                    .load_groups(l)
                    .iter()
                    .map(|g| Bar {
                        server: g.server.as_str(),
                        stat: pick(g),
                        higher,
                        failed: g.failed == g.runs,
                        noisy: g.noise.is_some_and(|n| n.max > NOISY)
                            || g.steal.is_some_and(|n| n.max > NOISY),
                        errors: g.errors + g.lost > 0,
                    })
                    .collect(),
            })
            .collect()
    };
    let mut panels = Vec::new();
    let echo = sum.loads_of(Kind::Echo);
    if !echo.is_empty() {
        panels.push((
            "Echo throughput: round trips per second (higher is better)".to_string(),
            cells(&echo, |g| g.rate, true, "msg/s"),
        ));
        panels.push((
            "Echo: server CPU per round trip (lower is better)".to_string(),
            cells(&echo, |g| g.server_us, false, "server µs/msg"),
        ));
    }
    let fanout = sum.loads_of(Kind::Fanout);
    if !fanout.is_empty() {
        panels.push((
            "Fan-out: deliveries per second (higher is better)".to_string(),
            cells(&fanout, |g| g.rate, true, "deliveries/s"),
        ));
        panels.push((
            "Fan-out: server CPU per delivery (lower is better)".to_string(),
            cells(&fanout, |g| g.server_us, false, "server µs/delivery"),
        ));
    }
    let idle = sum.loads_of(Kind::Idle);
    if !idle.is_empty() {
        panels.push((
            "Idle memory per connection (lower is better)".to_string(),
            cells(&idle, |g| g.rss_per_conn, false, "server RSS bytes/conn"),
        ));
    }
    panels
}

fn render_svg(sum: &Summary, source: &str) -> Result<String, String> {
    let panels = panels(sum);
    // Servers that appear in some load of this chart, in table order.
    let servers = &sum.servers;
    let inner_w = WIDTH as i32 - 2 * MARGIN;
    let min_cell_w = AXIS_W + 14 + servers.len() as i32 * 44;
    let fit = (inner_w / min_cell_w).max(1) as usize;
    // As many columns as the widest panel needs (and fit), each at most 480 px wide.
    let cols = panels.iter().map(|(_, cs)| cs.len()).max().unwrap_or(1).clamp(1, fit);
    let cell_w = (inner_w / cols as i32).min(480);
    let header_h = 98;
    let rows = |cs: &[Cell<'_>]| cs.len().div_ceil(cols) as i32;
    let height =
        header_h + panels.iter().map(|(_, cs)| 34 + CELL_H * rows(cs) + 12).sum::<i32>() + 40;

    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height as u32)).into_drawing_area();
        draw_svg(&root, sum, source, &panels, cols, cell_w, header_h)
            .and_then(|()| root.present())
            .map_err(|e| format!("drawing the SVG: {e}"))?;
    }
    Ok(out)
}

fn draw_svg<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    sum: &Summary,
    source: &str,
    panels: &[(String, Vec<Cell<'_>>)],
    cols: usize,
    cell_w: i32,
    header_h: i32,
) -> Drawn<DB> {
    let (width, height) = root.dim_in_pixel();
    let (width, height) = (width as i32, height as i32);
    root.fill(&WHITE)?;
    let left = |px, bold, fill| font(px, bold, fill, HPos::Left, VPos::Bottom);
    root.draw(&Text::new(
        "Sockeye vs other WebSocket servers",
        (MARGIN, 34),
        left(22.0, true, INK),
    ))?;
    let rounds = if sum.rounds > 1 {
        format!("bar: median of {} rounds · whisker: min–max · dot: best round", sum.rounds)
    } else {
        "one round per bar".to_string()
    };
    root.draw(&Text::new(
        format!(
            "{source} · server on one core (taskset -c 0), loadgen on another (-c 1), loopback · {rounds}"
        ),
        (MARGIN, 56),
        left(12.5, false, GREY[1]),
    ))?;
    // Legend.
    let mut x = MARGIN;
    let ly = 84;
    for (i, s) in sum.servers.iter().enumerate() {
        root.draw(&Rectangle::new([(x, ly - 13), (x + 14, ly + 1)], colour(s, i).filled()))?;
        let style = font(13.0, false, INK, HPos::Left, VPos::Center);
        root.draw(&Text::new(s.as_str(), (x + 19, ly - 6), style.clone()))?;
        let (w, _) = root.estimate_text_size(s, &style)?;
        x += 19 + w as i32 + 22;
    }

    let mut y = header_h;
    let rule = ShapeStyle::from(&RGBColor(0xbb, 0xbb, 0xbb)).stroke_width(1);
    for (title, cs) in panels {
        root.draw(&PathElement::new(vec![(MARGIN, y + 4), (width - MARGIN, y + 4)], rule))?;
        root.draw(&Text::new(title.as_str(), (MARGIN, y + 26), left(16.0, true, INK)))?;
        y += 34;
        for (i, c) in cs.iter().enumerate() {
            let (row, col) = ((i / cols) as i32, (i % cols) as i32);
            let area =
                root.clone().shrink((MARGIN + col * cell_w, y + row * CELL_H), (cell_w, CELL_H));
            draw_cell(&area, c, &sum.servers)?;
        }
        y += CELL_H * cs.len().div_ceil(cols) as i32 + 12;
    }
    root.draw(&Text::new(
        format!(
            "* a round had > {NOISY} core-s of other processes' CPU or of steal in its window (shared machine; see the noise table) · ! errors or losses counted (see the table)"
        ),
        (MARGIN, height - 24),
        left(11.0, false, GREY[3]),
    ))?;
    root.draw(&Text::new(
        "n/a: not run for that server (raw TCP has no idle or fan-out mode) · failed: no result",
        (MARGIN, height - 10),
        left(11.0, false, GREY[3]),
    ))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the SVG has a `<text>` element saying exactly `s` (plotters writes the text on
    /// a line of its own).
    fn svg_has_text(svg: &str, s: &str) -> bool {
        svg.contains(&format!(">\n{s}\n</text>"))
    }

    fn line(server: &str, load: &str, round: u32, rate: f64, us: f64) -> String {
        format!(
            r#"{{"mode":"echo","server":"{server}","load":"{load}","round":{round},"messages_per_s":{rate},"server_cpu_us_per_msg":{us},"latency_us":{{"p50":100,"p99":200}},"errors":{{"total":0}},"calib_ms":{},"loadavg":1.5,"machine_steal_core_s":0.01}}"#,
            20 + round
        )
    }

    /// Within-round ratios, not ratios of medians: Sockeye twice the peer in two of the three
    /// rounds both ran reads 2.00 paired, where the medians' ratio is 1.50 (300 ÷ 200, over
    /// Sockeye's four rounds and the peer's three).
    #[test]
    fn paired_ratios_are_taken_within_each_round() {
        let text = [
            line("sockeye-epoll", "echo-100x20", 1, 100.0, 10.0),
            line("bun", "echo-100x20", 1, 50.0, 20.0),
            line("sockeye-epoll", "echo-100x20", 2, 200.0, 5.0),
            line("bun", "echo-100x20", 2, 400.0, 2.5),
            line("sockeye-epoll", "echo-100x20", 3, 400.0, 2.5),
            line("bun", "echo-100x20", 3, 200.0, 5.0),
            // A round the peer did not run does not count.
            line("sockeye-epoll", "echo-100x20", 4, 1000.0, 1.0),
        ]
        .join("\n");
        let sum = Summary::new(&parse_jsonl(&text, "t"));
        assert_eq!(sum.paired.len(), 1);
        let p = &sum.paired[0];
        let (rate, cpu) = (p.rate.unwrap(), p.cpu.unwrap());
        assert_eq!((rate.n, rate.median, rate.min, rate.max), (3, 2.0, 0.5, 2.0));
        assert_eq!((cpu.median, cpu.min, cpu.max), (0.5, 0.5, 2.0));
        let md = markdown(&sum, "t");
        assert!(
            md.contains(
                "| echo-100x20 | sockeye-epoll | bun | 3 | 2.00 (0.50–2.00) | 0.50 (0.50–2.00) |"
            ),
            "{md}"
        );
        assert!(md.contains("bun 1.50"), "the ratio of medians stays as it was: {md}");
    }

    #[test]
    fn median_odd_even_and_range() {
        let s = stat(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!((s.q1, s.q3), (1.5, 2.5));
        let s = stat(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
        let s = stat(&[7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.q1, s.q3), (7.0, 7.0, 7.0, 7.0, 7.0));
        assert!(stat(&[]).is_none());
        assert_eq!(stat(&[f64::NAN, 5.0]).unwrap().median, 5.0);
        // Seven rounds: the default of compare.sh.
        let s = stat(&[10.0, 70.0, 20.0, 60.0, 30.0, 50.0, 40.0]).unwrap();
        assert_eq!(
            (s.median, s.q1, s.q3, s.best(true), s.best(false)),
            (40.0, 25.0, 55.0, 70.0, 10.0)
        );
    }

    #[test]
    fn groups_by_load_and_server_in_table_order() {
        let text = [
            line("tungstenite", "echo-100x20", 1, 100.0, 9.0),
            line("sockeye-epoll", "echo-100x20", 1, 150.0, 6.0),
            line("sockeye-io_uring", "echo-100x20", 1, 120.0, 7.0),
            line("tungstenite", "echo-100x20", 2, 80.0, 10.0),
            line("sockeye-epoll", "echo-100x20", 2, 170.0, 5.0),
            line("sockeye-io_uring", "echo-100x20", 2, 140.0, 7.0),
            line("tungstenite", "echo-100x20", 3, 90.0, 11.0),
            line("sockeye-epoll", "echo-100x20", 3, 160.0, 6.5),
            line("sockeye-io_uring", "echo-100x20", 3, 130.0, 8.0),
            line("raw", "echo-10x64k", 1, 20.0, 40.0),
            String::new(),
            "not json".to_string(),
        ]
        .join("\n");
        let sum = Summary::new(&parse_jsonl(&text, "t"));
        assert_eq!(sum.loads, ["echo-100x20", "echo-10x64k"]);
        assert_eq!(sum.servers, ["sockeye-epoll", "sockeye-io_uring", "tungstenite", "raw"]);
        assert_eq!(sum.rounds, 3);
        let gs = sum.load_groups("echo-100x20");
        assert_eq!(gs.len(), 3);
        let epoll = gs[0];
        assert_eq!(epoll.server, "sockeye-epoll");
        assert_eq!(
            epoll.rate,
            Some(Stat { median: 160.0, min: 150.0, max: 170.0, q1: 155.0, q3: 165.0, n: 3 })
        );
        assert_eq!(epoll.server_us.unwrap().median, 6.0);
        assert_eq!(epoll.server_us.unwrap().best(false), 5.0);
        let tung = gs[2];
        assert_eq!(tung.rate.unwrap().median, 90.0);

        // Sockeye-best is epoll's median 160 and best round 170; ratios of medians, then of
        // best rounds.
        assert_eq!(sockeye_best(&gs), Some((160.0, 170.0)));
        let r = ratio_cell(tung, &gs);
        assert_eq!(r, "Sockeye-best 1.78 (best 1.70)");
        assert_eq!(ratio_cell(epoll, &gs), "tungstenite 1.78 (best 1.70)");
        assert_eq!(ratio_cell(gs[1], &gs), "tungstenite 1.44 (best 1.40)");
        let md = markdown(&sum, "t.jsonl");
        assert!(
            md.contains(
                "| echo-100x20 | sockeye-epoll | 160 | 170 | 150–170 | 6.00 | 5.00 | 5.00–6.50 | 100 / 200 | 0 | – / 0.01 |"
            ),
            "{md}"
        );
        // Noise per round: three runs in round 1 (calibration 21 ms), and so on.
        assert!(md.contains("| 1 | 4 | 21.00 | – | 1.50 | 0.01 | – |"), "{md}");
        assert!(md.contains("| 3 | 3 | 23.00 | – | 1.50 | 0.01 | – |"), "{md}");
        assert!(
            svg_has_text(&render_svg(&sum, "t.jsonl").unwrap(), "n/a"),
            "raw has no 100x20 run"
        );
    }

    #[test]
    fn idle_best_is_the_smallest_and_failed_runs_are_counted() {
        let idle = |server: &str, bytes: f64| {
            format!(
                r#"{{"mode":"idle","server":"{server}","load":"idle-10k","round":1,"server_rss_bytes_per_conn":{bytes},"opened":10000,"errors":{{"total":0}}}}"#
            )
        };
        let text = [
            idle("sockeye-epoll", 230.0),
            idle("sockeye-io_uring", 490.0),
            idle("tungstenite", 4600.0),
            r#"{"failed":true,"server":"fastwebsockets","load":"idle-10k","round":1}"#.to_string(),
        ]
        .join("\n");
        let sum = Summary::new(&parse_jsonl(&text, "t"));
        let gs = sum.load_groups("idle-10k");
        assert_eq!(sockeye_best(&gs), Some((230.0, 230.0)));
        assert_eq!(ratio_cell(gs[2], &gs), "Sockeye-best 0.05 (best 0.05)");
        assert_eq!(ratio_cell(gs[0], &gs), "tungstenite 0.05 (best 0.05)");
        assert_eq!((gs[3].failed, gs[3].runs), (1, 1));
        assert_eq!(errors_cell(gs[3]), "0 (+1 failed runs)");
        let svg = render_svg(&sum, "t.jsonl").unwrap();
        assert!(svg_has_text(&svg, "failed") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn append_adds_fields_and_noise() {
        let run: Value = serde_json::from_str(
            r#"{"mode":"echo","machine_busy_core_s":2.5,"server_cpu_s":1.0,"loadgen_cpu_s":1.25}"#,
        )
        .unwrap();
        let extra =
            [("server", "raw"), ("round", "2"), ("load", "echo-100x20"), ("git", "1234e56")]
                .map(|(k, v)| (k.to_string(), v.to_string()));
        let o = annotate(Some(run), &extra);
        assert_eq!(o["server"], "raw");
        assert_eq!(o["round"], 2);
        assert_eq!(o["noise_core_s"], 0.25);
        assert_eq!(o["git"], "1234e56");
        let o = annotate(None, &[("calib_ms".to_string(), "null".to_string())]);
        assert!(o["calib_ms"].is_null());
        let o = annotate(None, &extra);
        assert_eq!(o["failed"], true);
        assert!(o["noise_core_s"].is_null());
    }

    #[test]
    fn formatting() {
        assert_eq!(group_thousands(1234567.8, 0), "1,234,568");
        assert_eq!(group_thousands(999.0, 0), "999");
        assert_eq!(group_thousands(6.7345, 2), "6.73");
        assert_eq!(compact(152345.0), "152k");
        assert_eq!(compact(1049000.0), "1.05M");
        assert_eq!(compact(25300.0), "25.3k");
        assert_eq!(compact(6.734), "6.73");
        assert_eq!(compact(230.0), "230");
        assert_eq!(compact(4600.0), "4600");
        assert_eq!(compact(0.0), "0");
        assert_eq!(tick_label(15.0), "15");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(150_000.0), "150k");
        assert_eq!(tick_label(1_500_000.0), "1.5M");
        let three = stat(&[144_352.0, 144_039.0, 158_337.0]);
        assert_eq!(spread_cell(three), "144k–158k");
        assert_eq!(best_cell(three, true, 0), "158,337");
        assert_eq!(best_cell(three, false, 0), "144,039");
        assert_eq!(spread_cell(stat(&[1.0, 2.0, 3.0, 4.0, 5.0])), "1.00–5.00, IQR 2.00–4.00");
        assert_eq!(spread_cell(stat(&[1.0])), "–");
        assert_eq!(noise_cell(stat(&[0.5, 0.25])), "0.38 (0.25–0.50)");
        assert_eq!(describe("echo-100x1k"), "100 conns × 1 KiB");
        assert_eq!(describe("echo-1000x20"), "1,000 conns × 20 B");
        assert_eq!(describe("idle-100k"), "100,000 idle conns");
        assert_eq!(describe("fanout-10k"), "10,000 subscribers");
        assert_eq!(describe("fanout-10k-4x8"), "10,000 subscribers, 4 publishers × 8 in flight");
        assert_eq!(describe("fanout-1k-16t"), "1,000 subscribers, 16 topics");
        assert_eq!(describe("echo-10kx20"), "10,000 conns × 20 B");
        assert_eq!(describe("weird"), "weird");
    }

    #[test]
    fn fanout_rows_show_deliveries_losses_and_both_panels() {
        let fan = |server: &str, round: u32, rate: f64, lost: u64| {
            format!(
                r#"{{"mode":"fanout","server":"{server}","load":"fanout-1k-16t","round":{round},"delivered_per_s":{rate},"messages_per_s":{rate},"server_cpu_us_per_msg":4.5,"latency_us":{{"p50":900,"p99":2000}},"lost":{lost},"errors":{{"total":0}}}}"#
            )
        };
        let text = [fan("bun", 1, 1000.0, 0), fan("bun", 2, 1200.0, 3), fan("uws", 1, 1500.0, 0)]
            .join("\n");
        let sum = Summary::new(&parse_jsonl(&text, "t"));
        let md = markdown(&sum, "t.jsonl");
        assert!(md.contains("| deliveries/s median | best | spread | server µs/delivery median |"));
        assert!(
            md.contains("| fanout-1k-16t | bun | 1,100 | 1,200 | 1000–1200 | 4.50 | 4.50 | 4.50–4.50 | 900 / 2,000 | 0 | 3 |"),
            "{md}"
        );
        let gs = sum.load_groups("fanout-1k-16t");
        assert_eq!(ratio_cell(gs[0], &gs), "", "no Sockeye row: nothing to compare with");
        let svg = render_svg(&sum, "t.jsonl").unwrap();
        assert!(svg_has_text(&svg, "Fan-out: deliveries per second (higher is better)"));
        assert!(svg_has_text(&svg, "Fan-out: server CPU per delivery (lower is better)"));
        assert!(svg_has_text(&svg, "best 1200"), "best label");
        assert!(!md.contains("Noise per round"), "no noise figures, no noise table");
    }

    #[test]
    fn servers_with_errors_are_not_ranked() {
        let fan = |server: &str, rate: f64, errors: u64| {
            format!(
                r#"{{"mode":"fanout","server":"{server}","load":"fanout-1k-16t","round":1,"delivered_per_s":{rate},"server_cpu_us_per_msg":4.5,"errors":{{"total":{errors}}}}}"#
            )
        };
        let text = [
            fan("sockeye-epoll", 2000.0, 900),
            fan("sockeye-io_uring", 1000.0, 0),
            fan("bun", 500.0, 0),
            fan("uws", 4000.0, 3),
            r#"{"mode":"fanout","server":"tungstenite","load":"fanout-1k-16t","round":1,"delivered_per_s":250,"errors":{"total":7,"close_timeout":7}}"#.to_string(),
        ]
        .join("\n");
        let sum = Summary::new(&parse_jsonl(&text, "t"));
        let gs = sum.load_groups("fanout-1k-16t");
        assert_eq!(sockeye_best(&gs), Some((1000.0, 1000.0)), "epoll had errors");
        assert_eq!(ratio_cell(gs[0], &gs), "not ranked (errors)");
        assert_eq!(gs[2].server, "tungstenite");
        assert_eq!(
            ratio_cell(gs[1], &gs),
            "tungstenite 4.00 (best 4.00) · bun 2.00 (best 2.00)",
            "uws had errors; tungstenite's late closes do not unrank it"
        );
        assert_eq!(ratio_cell(gs[3], &gs), "Sockeye-best 2.00 (best 2.00)");
        assert_eq!(ratio_cell(gs[4], &gs), "not ranked (errors)");
        let md = markdown(&sum, "t.jsonl");
        assert!(md.contains("| 7 (7 close timeouts) |"), "{md}");
    }

    #[test]
    fn calibration_scales_with_the_work() {
        let (small, _) = calibrate(1 << 12);
        let (large, x) = calibrate(1 << 22);
        assert!(small >= 0.0 && large > small, "{small} {large}");
        assert_ne!(x, 0);
    }

    #[test]
    fn ticks_cover_the_maximum() {
        for max in [0.7, 3.0, 17.0, 152_000.0, 1.2e6] {
            let (top, ticks) = nice_ticks(max);
            assert!(top >= max && ticks.len() >= 3 && ticks.len() <= 6, "{max}: {ticks:?}");
            assert_eq!(*ticks.last().unwrap(), top);
        }
    }
}
