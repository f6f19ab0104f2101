//! `chart`: turns the JSONL that `benches/compare.sh` writes into a markdown table and an SVG
//! chart, and appends one loadgen result to that JSONL (so the script needs no `jq`).
//!
//! ```text
//! chart --in results.jsonl [--svg out.svg] [--md out.md]    (no --md: the table goes to stdout)
//! chart append --to results.jsonl --from run.json [KEY=VALUE ...]
//! ```
//!
//! Each JSONL line is one loadgen `--json` object plus `server`, `load` and `round` (and
//! `noise_core_s`, `exit`, `failed`, added by `append`). Runs are grouped by (load, server); every
//! number shown is the median over rounds, with the min–max range. It only reads and writes the
//! files it is given; it never runs anything. The SVG is drawn with plotters' SVG backend (one
//! small bar chart per load and measure); the aggregation and the markdown are this file's own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use plotters::coord::Shift;
use plotters::prelude::{
    ChartBuilder, Color, DrawingArea, DrawingAreaErrorKind, DrawingBackend, EmptyElement, FontDesc,
    FontFamily, FontStyle, FontTransform, IntoDrawingArea, IntoSegmentedCoord, LabelAreaPosition,
    PathElement, RGBColor, Rectangle, SVGBackend, SegmentValue, ShapeStyle, Text, TextStyle,
    TRANSPARENT, WHITE,
};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{Map, Value};

const HELP: &str = "\
chart: tables and an SVG chart from benches/compare.sh results

USAGE:
  chart --in FILE.jsonl [--svg OUT.svg] [--md OUT.md]
        aggregate by (load, server): median and min-max over rounds. Without --md the
        markdown table goes to stdout.
  chart append --to FILE.jsonl --from RUN.json [KEY=VALUE ...]
        append RUN.json (one loadgen --json object) as one line with KEY=VALUE fields added
        (numbers stay numbers) and noise_core_s = machine busy - server - loadgen core-s.
        A missing or unreadable RUN.json appends a `failed: true` line instead. A one-line
        summary goes to stderr.
";

/// The servers and loads compare.sh knows, in the order tables and charts list them; anything
/// else found in the file follows in order of first appearance.
const SERVER_ORDER: &[&str] = &[
    "sockeye-epoll",
    "sockeye-io_uring",
    "tungstenite",
    "fastwebsockets",
    "tokio-websockets",
    "raw",
];
const LOAD_ORDER: &[&str] = &[
    "echo-100x20",
    "echo-100x1k",
    "echo-10x64k",
    "echo-500x16k",
    "echo-1000x20",
    "idle-10k",
    "idle-100k",
    "fanout-10k",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = if args.first().map(String::as_str) == Some("append") {
        append_cmd(&args[1..])
    } else {
        chart_cmd(&args)
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
    /// Fan-out: deliveries that never arrived (counted apart from `errors`).
    lost: u64,
    /// Other processes' CPU over the window: machine busy − server − loadgen, core-s.
    noise: Option<f64>,
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
            lost: o.get("lost").and_then(Value::as_u64).unwrap_or(0),
            noise: num(o, "noise_core_s"),
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

/// Median and range over the rounds of one (load, server).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

/// Median (mean of the two middle values for an even count), min and max; `None` when empty.
fn stat(values: &[f64]) -> Option<Stat> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some(Stat { median, min: v[0], max: v[n - 1], n })
}

#[derive(Debug, Clone)]
struct Group {
    load: String,
    server: String,
    kind: Kind,
    runs: usize,
    failed: usize,
    errors: u64,
    lost: u64,
    rate: Option<Stat>,
    server_us: Option<Stat>,
    p50: Option<Stat>,
    p99: Option<Stat>,
    noise: Option<Stat>,
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
                    lost: rs.iter().map(|r| r.lost).sum(),
                    rate: st(|r| r.rate),
                    server_us: st(|r| r.server_us),
                    p50: st(|r| r.p50),
                    p99: st(|r| r.p99),
                    noise: st(|r| r.noise),
                    rss_per_conn: st(|r| r.rss_per_conn),
                    opened: st(|r| r.opened),
                    setup_s: st(|r| r.setup_s),
                    idle_cpu_s: st(|r| r.idle_cpu_s),
                });
            }
        }
        Summary { loads, servers, groups, rounds }
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

/// Sockeye's best headline median for a load (max msg/s, min bytes/conn), over its backends.
fn sockeye_best(groups: &[&Group]) -> Option<f64> {
    let vals = groups
        .iter()
        .filter(|g| is_sockeye(&g.server))
        .filter_map(|g| Some((g.headline().0?.median, g.headline().1)));
    vals.fold(None, |acc, (v, higher)| match acc {
        None => Some(v),
        Some(a) if higher => Some(f64::max(a, v)),
        Some(a) => Some(f64::min(a, v)),
    })
}

/// The ratio cell of one row: for a Sockeye row, this row's median ÷ each peer's median; for a
/// peer row, Sockeye-best ÷ this row's median. Ratios are on the headline number (msg/s, or
/// bytes/connection for idle loads).
fn ratio_cell(g: &Group, all: &[&Group]) -> String {
    let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
    let Some(mine) = g.headline().0.map(|s| s.median) else { return String::new() };
    if is_sockeye(&g.server) {
        all.iter()
            .filter(|p| !is_sockeye(&p.server))
            .filter_map(|p| {
                let r = ratio(mine, p.headline().0?.median)?;
                Some(format!("{} {:.2}", p.server, r))
            })
            .collect::<Vec<_>>()
            .join(" · ")
    } else {
        match sockeye_best(all).and_then(|b| ratio(b, mine)) {
            Some(r) => format!("Sockeye-best {r:.2}"),
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

/// `median (min–max)`: the median in full with thousands separators, the range compact
/// (`144,352 (144k–158k)`).
fn range_cell(s: Option<Stat>, decimals: usize) -> String {
    match s {
        None => "–".to_string(),
        Some(s) if s.n == 1 || s.min == s.max => group_thousands(s.median, decimals),
        Some(s) => {
            format!(
                "{} ({}–{})",
                group_thousands(s.median, decimals),
                compact(s.min),
                compact(s.max)
            )
        }
    }
}

fn med_cell(s: Option<Stat>, decimals: usize) -> String {
    s.map_or_else(|| "–".to_string(), |s| group_thousands(s.median, decimals))
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

/// `echo-100x1k` → `100 conns × 1 KiB`; `idle-10k` → `10,000 idle conns`; `fanout-10k` →
/// `10,000 subscribers`. Unknown shapes come back as they are.
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
        "idle" => count(rest).map(|c| format!("{} idle conns", group_thousands(c as f64, 0))),
        "fanout" => count(rest).map(|c| format!("{} subscribers", group_thousands(c as f64, 0))),
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
        "Results from `{source}`: {} server(s), {} load(s), up to {} round(s) each. Every number \
         is the median over rounds, (min–max) where rounds differ. Ratios compare medians: a \
         Sockeye row shows Sockeye ÷ each peer, a peer row Sockeye-best ÷ that peer (msg/s: \
         > 1 means Sockeye is faster; bytes/conn: < 1 means Sockeye uses less). Noise = CPU \
         the rest of the machine used during the window (machine busy − server − loadgen, \
         core-s, max over rounds).\n",
        sum.servers.len(),
        sum.loads.len(),
        sum.rounds
    );
    let max_cell =
        |st: Option<Stat>| st.map_or_else(|| "–".to_string(), |st| format!("{:.2}", st.max));
    for (kind, title) in [
        (Kind::Echo, "Echo (round trips; K = 1 in flight per connection)"),
        (Kind::Fanout, "Fan-out (one publisher line → every subscriber on /chat)"),
        (Kind::Idle, "Idle connections (server RSS growth per handshaken connection)"),
    ] {
        let loads = sum.loads_of(kind);
        if loads.is_empty() {
            continue;
        }
        let _ = writeln!(s, "### {title}\n");
        match kind {
            Kind::Echo | Kind::Fanout => {
                let (rate, us) = if kind == Kind::Echo {
                    ("msg/s median (min–max)", "server µs/msg")
                } else {
                    ("delivered msg/s median (min–max)", "server µs/delivery")
                };
                let _ = writeln!(
                    s,
                    "| load | server | {rate} | {us} | p50 / p99 µs | errors | noise core-s | ratio (msg/s) |"
                );
                let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|---|");
                for l in loads {
                    let gs = sum.load_groups(l);
                    for g in &gs {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                            l,
                            g.server,
                            range_cell(g.rate, 0),
                            med_cell(g.server_us, 2),
                            med_cell(g.p50, 0),
                            med_cell(g.p99, 0),
                            errors_cell(g),
                            max_cell(g.noise),
                            ratio_cell(g, &gs)
                        );
                    }
                }
            }
            Kind::Idle => {
                let _ = writeln!(
                    s,
                    "| load | server | RSS bytes/conn median (min–max) | opened | connect+handshake s | server CPU s over the hold | errors | ratio (bytes/conn) |"
                );
                let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|---|");
                for l in loads {
                    let gs = sum.load_groups(l);
                    for g in &gs {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} | {} | {} | {} |",
                            l,
                            g.server,
                            range_cell(g.rss_per_conn, 0),
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
/// data for this load), median height, min–max whisker, value on top.
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
    /// No round produced a result.
    failed: bool,
    /// Some round had more than `NOISY` core-s of other processes in its window.
    noisy: bool,
    /// Errors (or fan-out losses) counted over the rounds.
    errors: bool,
}

/// Other processes' CPU in a window (core-s) above which a run is marked noisy (`*`).
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
        s => s,
    }
}

/// The chart's panels, each a title and its cells: echo msg/s, echo server CPU per message,
/// then idle memory and fan-out deliveries together.
fn panels(sum: &Summary) -> Vec<(String, Vec<Cell<'_>>)> {
    type Pick = fn(&Group) -> Option<Stat>;
    let cells = |loads: &[&String], pick: Pick, unit: &str| -> Vec<Cell<'_>> {
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
                        failed: g.failed == g.runs,
                        noisy: g.noise.is_some_and(|n| n.max > NOISY),
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
            cells(&echo, |g| g.rate, "msg/s"),
        ));
        panels.push((
            "Server CPU per round trip (lower is better)".to_string(),
            cells(&echo, |g| g.server_us, "server µs/msg"),
        ));
    }
    let idle = sum.loads_of(Kind::Idle);
    let fanout = sum.loads_of(Kind::Fanout);
    let mut last = Vec::new();
    let mut last_title = Vec::new();
    if !idle.is_empty() {
        last.extend(cells(&idle, |g| g.rss_per_conn, "server RSS bytes/conn (lower is better)"));
        last_title.push("idle memory per connection");
    }
    if !fanout.is_empty() {
        last.extend(cells(&fanout, |g| g.rate, "delivered msg/s (higher is better)"));
        last_title.push("fan-out deliveries per second");
    }
    if !last.is_empty() {
        let mut t = last_title.join(" · ");
        if let Some(c) = t.get(..1) {
            t = c.to_uppercase() + &t[1..];
        }
        panels.push((t, last));
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
        header_h + panels.iter().map(|(_, cs)| 34 + CELL_H * rows(cs) + 12).sum::<i32>() + 26;

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
        format!("bars: median of {} rounds, whiskers: min–max", sum.rounds)
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
            "* a round had > {NOISY} core-s of other processes' CPU in its window (shared machine) · ! errors counted (see the table) · n/a: not run for that server (raw TCP has no idle or fan-out mode) · failed: no result"
        ),
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
            r#"{{"mode":"echo","server":"{server}","load":"{load}","round":{round},"messages_per_s":{rate},"server_cpu_us_per_msg":{us},"latency_us":{{"p50":100,"p99":200}},"errors":{{"total":0}}}}"#
        )
    }

    #[test]
    fn median_odd_even_and_range() {
        let s = stat(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = stat(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
        let s = stat(&[7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (7.0, 7.0, 7.0));
        assert!(stat(&[]).is_none());
        assert_eq!(stat(&[f64::NAN, 5.0]).unwrap().median, 5.0);
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
        assert_eq!(epoll.rate, Some(Stat { median: 160.0, min: 150.0, max: 170.0, n: 3 }));
        assert_eq!(epoll.server_us.unwrap().median, 6.0);
        let tung = gs[2];
        assert_eq!(tung.rate.unwrap().median, 90.0);

        // Sockeye-best is epoll's 160; ratios are of medians.
        assert_eq!(sockeye_best(&gs), Some(160.0));
        let r = ratio_cell(tung, &gs);
        assert_eq!(r, "Sockeye-best 1.78");
        assert_eq!(ratio_cell(epoll, &gs), "tungstenite 1.78");
        assert_eq!(ratio_cell(gs[1], &gs), "tungstenite 1.44");
        let md = markdown(&sum, "t.jsonl");
        assert!(
            md.contains("| echo-100x20 | sockeye-epoll | 160 (150–170) | 6.00 | 100 / 200 | 0 |")
        );
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
        assert_eq!(sockeye_best(&gs), Some(230.0));
        assert_eq!(ratio_cell(gs[2], &gs), "Sockeye-best 0.05");
        assert_eq!(ratio_cell(gs[0], &gs), "tungstenite 0.05");
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
        assert_eq!(range_cell(stat(&[144_352.0, 144_039.0, 158_337.0]), 0), "144,352 (144k–158k)");
        assert_eq!(describe("echo-100x1k"), "100 conns × 1 KiB");
        assert_eq!(describe("echo-1000x20"), "1,000 conns × 20 B");
        assert_eq!(describe("idle-100k"), "100,000 idle conns");
        assert_eq!(describe("fanout-10k"), "10,000 subscribers");
        assert_eq!(describe("weird"), "weird");
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
