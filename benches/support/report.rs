//! The throughput bench's results as JSON and as an SVG chart (the bench and the test of these
//! writers include this file with `#[path = ...] mod report;`), and how runs repeated with
//! `--repeat` become one row each ([`summarize`]). Its includers include
//! `examples/support/median.rs` too, as `crate::median`.
//!
//! The chart is a grouped bar chart drawn by hand: one panel per workload, each with its own
//! linear MB/s scale (sequential reads run orders of magnitude faster than random writes), one
//! bar per system and page size, coloured the same in every panel, with a legend.

#![allow(dead_code)] // each includer uses its own subset.

use std::fmt::Write as _;

/// One (workload, system) measurement, as reported: one run, or with `--repeat` the run of
/// median time among the rounds (see [`summarize`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `seq-read`, `rand-read`, `rand-write`, `rmw`.
    pub workload: String,
    /// `mmap`, `pread`, `pwrite`, `umap`.
    pub system: String,
    /// The page size in bytes: umap's page, the system page for mmap, 4 KiB for pread.
    pub page_bytes: u64,
    /// Seconds, write-back included.
    pub seconds: f64,
    /// Write workloads: the seconds spent writing back at the end.
    pub flush_seconds: Option<f64>,
    /// 10^6 bytes touched per second.
    pub mb_per_s: f64,
    /// 4 KiB positions touched per second.
    pub pages_per_s: f64,
    /// Fault events (or system calls) per second.
    pub faults_per_s: f64,
    /// umap: write-protect faults per second.
    pub wp_faults_per_s: Option<f64>,
    /// MB/s over kernel mmap's on the same workload.
    pub vs_mmap: Option<f64>,
    /// MB/s over pread's (pwrite's) on the same workload.
    pub vs_pread: Option<f64>,
    /// The seconds of every round, in round order (one entry for a single run).
    pub seconds_each: Vec<f64>,
    /// Every round's ratio to mmap of the same round, in round order (empty without one).
    pub vs_mmap_each: Vec<f64>,
    /// Every round's ratio to pread (pwrite) of the same round (empty without one).
    pub vs_pread_each: Vec<f64>,
}

/// One measured run of a (workload, system) pair and the round it was measured in: a [`Row`]
/// whose ratio fields are not filled in yet (see [`summarize`]).
#[derive(Debug, Clone)]
pub struct Run {
    /// 0 for the first round.
    pub round: usize,
    pub row: Row,
}

/// The report's rows from every run: one row per (workload, system, page size), in order of
/// first appearance.
///
/// Each run's ratios are taken to the `mmap` run and to the `pread` (or `pwrite`) run of the
/// same workload *in the same round*, so that the machine's drift between rounds cancels.
/// A row's figures (time, MB/s, faults/s, ...) are those of its run of median time (of the
/// two middle runs, the slower), so that they belong together; its ratios are the medians of
/// the per-round ratios. `seconds_each` and the `_each` ratios keep every round's value.
pub fn summarize(runs: &[Run]) -> Vec<Row> {
    let ratio = |run: &Run, baselines: &[&str]| {
        runs.iter()
            .find(|b| {
                b.round == run.round
                    && b.row.workload == run.row.workload
                    && baselines.contains(&b.row.system.as_str())
            })
            .map(|b| run.row.mb_per_s / b.row.mb_per_s)
    };
    let mut rows: Vec<Row> = Vec::new();
    let same = |a: &Row, b: &Row| {
        a.workload == b.workload && a.system == b.system && a.page_bytes == b.page_bytes
    };
    for first in runs {
        if rows.iter().any(|r| same(r, &first.row)) {
            continue;
        }
        let mut group: Vec<&Run> = runs.iter().filter(|r| same(&r.row, &first.row)).collect();
        group.sort_by_key(|r| r.round);
        let seconds_each: Vec<f64> = group.iter().map(|r| r.row.seconds).collect();
        let vs_mmap_each: Vec<f64> = group.iter().filter_map(|r| ratio(r, &["mmap"])).collect();
        let vs_pread_each: Vec<f64> = group
            .iter()
            .filter_map(|r| ratio(r, &["pread", "pwrite"]))
            .collect();
        let mut by_time = group.clone();
        by_time.sort_by(|a, b| a.row.seconds.total_cmp(&b.row.seconds));
        let typical = &by_time[by_time.len() / 2].row;
        rows.push(Row {
            vs_mmap: median(&vs_mmap_each),
            vs_pread: median(&vs_pread_each),
            seconds_each,
            vs_mmap_each,
            vs_pread_each,
            ..typical.clone()
        });
    }
    rows
}

pub use crate::median::median;

/// The smallest and largest of `values`, if there are at least two (a range says nothing
/// about one run).
fn range(values: &[f64]) -> Option<(f64, f64)> {
    crate::median::min_max(values).filter(|_| values.len() > 1)
}

/// A row's time for the tables: `0.412`, or `0.412 (0.398-0.520)` over several rounds.
pub fn time_cell(row: &Row) -> String {
    match range(&row.seconds_each) {
        Some((lo, hi)) => format!("{:.3} ({lo:.3}-{hi:.3})", row.seconds),
        None => format!("{:.3}", row.seconds),
    }
}

/// A ratio for the tables: `0.87x`, `0.87x (0.80-0.95)` over several rounds, `-` without one.
pub fn ratio_cell(ratio: Option<f64>, each: &[f64]) -> String {
    match (ratio, range(each)) {
        (None, _) => "-".into(),
        (Some(r), Some((lo, hi))) => format!("{r:.2}x ({lo:.2}-{hi:.2})"),
        (Some(r), None) => format!("{r:.2}x"),
    }
}

/// The line a report opens with when the bench stopped at a failed run (`failure` says which
/// and why): the table then holds only the runs made before it, counted from `rows`.
pub fn stopped_note(failure: &str, rows: &[Row]) -> String {
    // A report from before `seconds_each` existed counts one run per row.
    let runs: usize = rows.iter().map(|r| r.seconds_each.len().max(1)).sum();
    format!(
        "The bench stopped at a failed run ({failure}); the table holds the {runs} run{} \
         made before it.",
        if runs == 1 { "" } else { "s" }
    )
}

impl Row {
    /// The series the row belongs to in the chart: system and page size (`umap 64 KiB`).
    pub fn series(&self) -> String {
        format!("{} {}", self.system, page_label(self.page_bytes))
    }
}

/// `4 KiB`, `1 MiB`, `512 B`.
pub fn page_label(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// The results and how they were made, as a JSON document: `{"meta": {...}, "rows": [...]}`,
/// with one object per row (`null` for a missing or non-finite number).
pub fn to_json(meta: serde_json::Value, rows: &[Row]) -> String {
    let number = |x: f64| {
        serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
    };
    let option = |x: Option<f64>| x.map_or(serde_json::Value::Null, number);
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "workload": r.workload,
                "system": r.system,
                "page_bytes": r.page_bytes,
                "seconds": number(r.seconds),
                "flush_seconds": option(r.flush_seconds),
                "mb_per_s": number(r.mb_per_s),
                "pages_per_s": number(r.pages_per_s),
                "faults_per_s": number(r.faults_per_s),
                "wp_faults_per_s": option(r.wp_faults_per_s),
                "vs_mmap": option(r.vs_mmap),
                "vs_pread": option(r.vs_pread),
                "seconds_each": r.seconds_each.iter().map(|&x| number(x)).collect::<Vec<_>>(),
                "vs_mmap_each": r.vs_mmap_each.iter().map(|&x| number(x)).collect::<Vec<_>>(),
                "vs_pread_each": r.vs_pread_each.iter().map(|&x| number(x)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = serde_json::json!({ "meta": meta, "rows": rows });
    serde_json::to_string_pretty(&doc).expect("a JSON value always serialises")
}

/// Reads a document written by [`to_json`] back: its `meta` object and its rows (a `null`
/// number reads as NaN, or as `None` where the field is optional).
pub fn from_json(text: &str) -> Result<(serde_json::Value, Vec<Row>), String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let rows = doc["rows"]
        .as_array()
        .ok_or("no \"rows\" array: not a throughput bench report")?;
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let text = |key: &str| {
                r[key]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("row {i}: \"{key}\" is not a string"))
            };
            let option = |key: &str| r[key].as_f64();
            let number = |key: &str| option(key).unwrap_or(f64::NAN);
            // Reports written before `--repeat` have no `_each` lists: one run each.
            let each = |key: &str, single: Option<f64>| match r[key].as_array() {
                Some(values) => values
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(f64::NAN))
                    .collect(),
                None => single.into_iter().collect::<Vec<f64>>(),
            };
            Ok(Row {
                seconds_each: each("seconds_each", Some(number("seconds"))),
                vs_mmap_each: each("vs_mmap_each", option("vs_mmap")),
                vs_pread_each: each("vs_pread_each", option("vs_pread")),
                workload: text("workload")?,
                system: text("system")?,
                page_bytes: r["page_bytes"]
                    .as_u64()
                    .ok_or_else(|| format!("row {i}: \"page_bytes\" is not a whole number"))?,
                seconds: number("seconds"),
                flush_seconds: option("flush_seconds"),
                mb_per_s: number("mb_per_s"),
                pages_per_s: number("pages_per_s"),
                faults_per_s: number("faults_per_s"),
                wp_faults_per_s: option("wp_faults_per_s"),
                vs_mmap: option("vs_mmap"),
                vs_pread: option("vs_pread"),
            })
        })
        .collect::<Result<Vec<Row>, String>>()?;
    Ok((doc["meta"].clone(), rows))
}

/// Seconds since the Unix epoch as `2026-11-30 12:09 UTC` (proleptic Gregorian calendar).
pub fn utc_minute(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let minute_of_day = unix_secs % 86_400 / 60;
    // Days to a civil date (Howard Hinnant's algorithm, eras of 400 years from 0000-03-01).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// The rows as a Markdown table (for docs), with the same columns as the bench's text table.
pub fn to_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | system | page | time s | flush s | MB/s | pages/s | faults/s | \
         wp faults/s | vs mmap | vs pread |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {} | {} |",
            r.workload.replace('|', "\\|"),
            r.system.replace('|', "\\|"),
            page_label(r.page_bytes),
            time_cell(r),
            r.flush_seconds.map_or("-".into(), |t| format!("{t:.3}")),
            r.mb_per_s,
            r.pages_per_s,
            r.faults_per_s,
            r.wp_faults_per_s.map_or("-".into(), |n| format!("{n:.0}")),
            ratio_cell(r.vs_mmap, &r.vs_mmap_each),
            ratio_cell(r.vs_pread, &r.vs_pread_each),
        );
    }
    out
}

/// Text made safe for XML character data and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Bar colours, one per series in order of first appearance (the Okabe-Ito palette, which
/// reads under colour blindness).
const COLOURS: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

/// A step for about `ticks` ticks up to `max`: 1, 2 or 5 times a power of ten.
pub fn nice_step(max: f64, ticks: usize) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / ticks.max(1) as f64;
    let power = 10f64.powf(raw.log10().floor());
    let mantissa = raw / power;
    let nice = if mantissa <= 1.0 {
        1.0
    } else if mantissa <= 2.0 {
        2.0
    } else if mantissa <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// A compact number for labels: `1234` -> `1234`, `12.5` -> `12.5`, `0.123` -> `0.12`.
fn short(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A tick value with as many decimals as the step needs: `0`, `250`, `0.5`, `0.05`.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{v:.decimals$}")
}

/// A finite, non-negative value for drawing.
fn drawable(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// The width a legend entry takes (a swatch and about 7 pixels a character).
fn legend_step(series: &str) -> f64 {
    24.0 + 7.0 * series.chars().count() as f64
}

const PANEL_W: f64 = 250.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 56.0;
const TOP: f64 = 56.0;
const GAP: f64 = 72.0;
const LEGEND_H: f64 = 40.0;

/// The chart: MB/s by workload (panels, in order of first appearance) and series (system and
/// page size, bars), each panel on its own scale. Every bar is a `rect` of class `bar` with
/// `data-workload`, `data-series` and `data-mb-per-s` attributes and a tooltip.
pub fn to_svg(title: &str, subtitle: &str, rows: &[Row]) -> String {
    let mut workloads: Vec<&str> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    for r in rows {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
        if !series.contains(&r.series()) {
            series.push(r.series());
        }
    }
    let colour = |s: &str| {
        let i = series.iter().position(|x| x == s).unwrap_or(0);
        COLOURS[i % COLOURS.len()]
    };
    let panels = workloads.len().max(1) as f64;
    let legend_w: f64 = series.iter().map(|s| legend_step(s)).sum();
    let width = (LEFT + panels * (PANEL_W + GAP) + 10.0).max(LEFT + legend_w + 10.0);
    let height = TOP + PANEL_H + 50.0 + LEGEND_H;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, "<title>{}</title>", escape(title));
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="38" fill="#444">{}</text>"##,
        escape(subtitle)
    );

    for (p, workload) in workloads.iter().enumerate() {
        let x0 = LEFT + p as f64 * (PANEL_W + GAP);
        let bars: Vec<&Row> = rows.iter().filter(|r| r.workload == *workload).collect();
        let max = bars
            .iter()
            .map(|r| drawable(r.mb_per_s))
            .fold(0.0, f64::max);
        let step = nice_step(max, 5);
        let top = if max > 0.0 {
            (max / step).ceil() * step
        } else {
            step
        };
        let y_of = |v: f64| TOP + PANEL_H - v / top * PANEL_H;
        let _ = writeln!(
            svg,
            r#"<g class="panel" data-workload="{}">"#,
            escape(workload)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            x0 + PANEL_W / 2.0,
            TOP + PANEL_H + 36.0,
            escape(workload)
        );
        // Grid lines and tick labels.
        let ticks = (top / step).round() as usize;
        for t in 0..=ticks {
            let v = t as f64 * step;
            let y = y_of(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##,
                x0 + PANEL_W
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                x0 - 4.0,
                y + 4.0,
                tick_label(v, step)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">MB/s</text>"#,
            x0 - 44.0,
            TOP + PANEL_H / 2.0,
            x0 - 44.0,
            TOP + PANEL_H / 2.0
        );
        // The bars, in series order.
        let slot = PANEL_W / bars.len().max(1) as f64;
        for (b, r) in bars.iter().enumerate() {
            let v = drawable(r.mb_per_s);
            let (x, w) = (x0 + b as f64 * slot + slot * 0.1, slot * 0.8);
            let y = y_of(v);
            let s = r.series();
            let _ = writeln!(
                svg,
                r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}" data-workload="{}" data-series="{}" data-mb-per-s="{}"><title>{} on {}: {} MB/s</title></rect>"#,
                TOP + PANEL_H - y,
                colour(&s),
                escape(workload),
                escape(&s),
                v,
                escape(workload),
                escape(&s),
                short(v)
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                x + w / 2.0,
                y - 3.0,
                short(v)
            );
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="#000"/>"##,
            TOP + PANEL_H,
            x0 + PANEL_W,
            TOP + PANEL_H
        );
        let _ = writeln!(svg, "</g>");
    }

    // The legend.
    let y = TOP + PANEL_H + 56.0;
    let mut x = LEFT;
    for s in &series {
        let _ = writeln!(
            svg,
            r#"<rect class="legend" x="{x:.1}" y="{y:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            colour(s),
            x + 16.0,
            y + 10.0,
            escape(s)
        );
        x += legend_step(s);
    }
    svg.push_str("</svg>\n");
    svg
}
