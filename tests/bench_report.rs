//! The throughput bench's report writers (`benches/support/report.rs`): the JSON parses and
//! holds every row; the SVG chart is well-formed, with one bar per row, heights proportional to
//! MB/s within a workload's panel, and text escaped; repeated runs become one row each, with
//! per-round ratios and their medians.

#[path = "../examples/support/median.rs"]
mod median;
#[path = "../benches/support/report.rs"]
mod report;

use report::Row;

fn row(workload: &str, system: &str, page_bytes: u64, mb_per_s: f64) -> Row {
    Row {
        workload: workload.to_string(),
        system: system.to_string(),
        page_bytes,
        seconds: 1.5,
        flush_seconds: workload.contains("write").then_some(0.25),
        mb_per_s,
        pages_per_s: mb_per_s * 1e6 / 4096.0,
        faults_per_s: 1234.0,
        wp_faults_per_s: (system == "umap").then_some(56.0),
        vs_mmap: Some(mb_per_s / 1000.0),
        vs_pread: None,
        seconds_each: vec![1.5],
        vs_mmap_each: vec![mb_per_s / 1000.0],
        vs_pread_each: Vec::new(),
    }
}

/// A run of `round` as the bench hands it to `summarize`: no ratios yet.
fn run(round: usize, workload: &str, system: &str, page_bytes: u64, seconds: f64) -> report::Run {
    let mut row = row(workload, system, page_bytes, 1000.0 / seconds);
    row.seconds = seconds;
    row.faults_per_s = seconds * 10.0; // tells which run a row's figures come from
    row.vs_mmap = None;
    row.seconds_each.clear();
    row.vs_mmap_each.clear();
    report::Run { round, row }
}

#[test]
fn repeated_runs_become_one_row_with_per_round_ratios_and_their_medians() {
    // Three rounds: the machine is twice as slow in round 1, for mmap and umap alike.
    let mut runs = Vec::new();
    for (round, slow) in [(0, 1.0), (1, 2.0), (2, 1.0)] {
        runs.push(run(round, "seq-read", "mmap", 4096, 0.4 * slow));
        runs.push(run(round, "seq-read", "pread", 4096, 0.5 * slow));
        runs.push(run(
            round,
            "seq-read",
            "umap",
            64 << 10,
            [0.5, 0.8, 0.44][round] * slow,
        ));
        runs.push(run(round, "rand-write", "mmap", 4096, 1.0));
        runs.push(run(round, "rand-write", "pwrite", 4096, 2.0));
        runs.push(run(round, "rand-write", "umap", 4096, 0.5));
    }
    let rows = report::summarize(&runs);
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.workload.as_str(), r.system.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("seq-read", "mmap"),
            ("seq-read", "pread"),
            ("seq-read", "umap"),
            ("rand-write", "mmap"),
            ("rand-write", "pwrite"),
            ("rand-write", "umap")
        ],
        "one row per system, in order of first appearance"
    );
    let umap = &rows[2];
    assert_eq!(
        umap.seconds_each,
        [0.5, 1.6, 0.44],
        "every round's time, in round order"
    );
    // Each round's ratio is to mmap of the same round: 0.8, 0.5, 0.909..., median 0.8; the
    // ratio of the medians (0.4 / 0.5 = 0.8) happens to agree, the slow round cancels.
    let each = &umap.vs_mmap_each;
    assert_eq!(each.len(), 3);
    for (got, want) in each.iter().zip([0.4 / 0.5, 0.8 / 1.6, 0.4 / 0.44]) {
        assert!((got - want).abs() < 1e-12, "{each:?}");
    }
    assert!((umap.vs_mmap.unwrap() - 0.8).abs() < 1e-12);
    assert!(
        (umap.vs_pread.unwrap() - 1.0).abs() < 1e-12,
        "{:?}",
        umap.vs_pread_each
    );
    // The row's figures come from its run of median time (0.5 s, round 0), all together.
    assert_eq!(umap.seconds, 0.5);
    assert_eq!(umap.faults_per_s, 5.0);
    assert!((umap.mb_per_s - 2000.0).abs() < 1e-9);
    // The baselines' own ratios are 1; the write workload's pread baseline is pwrite.
    assert_eq!(rows[0].vs_mmap, Some(1.0));
    assert_eq!(rows[4].vs_pread, Some(1.0));
    assert_eq!(rows[5].vs_pread, Some(4.0));
    assert_eq!(rows[5].vs_mmap, Some(2.0));

    // The tables show the median with the range of the rounds.
    assert_eq!(report::time_cell(umap), "0.500 (0.440-1.600)");
    assert_eq!(
        report::ratio_cell(umap.vs_mmap, &umap.vs_mmap_each),
        "0.80x (0.50-0.91)"
    );
    let md = report::to_markdown(&rows);
    assert!(md.contains("| 0.500 (0.440-1.600) |"), "{md}");
    // A single run shows no range.
    let single = report::summarize(&runs[..6]);
    assert_eq!(report::time_cell(&single[2]), "0.500");
    assert_eq!(
        report::ratio_cell(single[2].vs_mmap, &single[2].vs_mmap_each),
        "0.80x"
    );
    // The per-round figures survive the JSON.
    let (_, back) = report::from_json(&report::to_json(serde_json::json!({}), &rows)).unwrap();
    assert_eq!(back, rows);
}

#[test]
fn an_even_number_of_rounds_takes_the_slower_middle_run_and_the_mean_middle_ratio() {
    let mut runs = Vec::new();
    for (round, umap) in [1.0, 4.0, 2.0, 3.0].into_iter().enumerate() {
        runs.push(run(round, "seq-read", "mmap", 4096, 1.0));
        runs.push(run(round, "seq-read", "umap", 4096, umap));
    }
    let rows = report::summarize(&runs);
    assert_eq!(rows[1].seconds, 3.0, "of 2 s and 3 s, the slower");
    // Ratios 1, 0.25, 0.5, 0.333: the median is the mean of 0.333 and 0.5.
    assert!((rows[1].vs_mmap.unwrap() - (1.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
    assert_eq!(report::median(&[]), None);
    assert_eq!(report::median(&[2.0]), Some(2.0));
    // Without a pread run there is no pread ratio, and no empty range either.
    assert_eq!(rows[1].vs_pread, None);
    assert_eq!(report::ratio_cell(None, &[]), "-");
}

#[test]
fn a_bench_stopped_by_a_failed_run_reports_the_runs_before_it() {
    // Round 2 of 3 failed at its umap run, after its mmap and pread runs: mmap and pread ran
    // twice, umap once. Every run that exists is reported, umap's ratio against the mmap run
    // of its own round.
    let mut runs = Vec::new();
    for round in 0..2 {
        runs.push(run(round, "seq-read", "mmap", 4096, [0.4, 0.8][round]));
        runs.push(run(round, "seq-read", "pread", 4096, 0.5));
        if round == 0 {
            runs.push(run(round, "seq-read", "umap", 64 << 10, 0.5));
        }
    }
    let rows = report::summarize(&runs);
    assert_eq!(rows.len(), 3);
    let umap = &rows[2];
    assert_eq!(umap.seconds_each, [0.5]);
    assert_eq!(umap.vs_mmap_each, [0.4 / 0.5], "not against round 1's mmap");
    assert_eq!(rows[0].seconds_each, [0.4, 0.8]);
    assert_eq!(
        report::stopped_note("seq-read on umap 64 KiB (round 2/3): no memory", &rows),
        "The bench stopped at a failed run (seq-read on umap 64 KiB (round 2/3): no memory); \
         the table holds the 5 runs made before it."
    );
    assert!(report::stopped_note("x", &rows[2..]).ends_with("the 1 run made before it."));
    // A report from before `seconds_each` counts a run per row.
    let mut old = rows[2].clone();
    old.seconds_each.clear();
    assert!(report::stopped_note("x", &[old]).contains("the 1 run made"));
}

#[test]
fn reports_written_before_repeat_read_as_single_runs() {
    let old = r#"{"meta": {}, "rows": [{"workload": "seq-read", "system": "umap",
        "page_bytes": 65536, "seconds": 0.5, "flush_seconds": null, "mb_per_s": 2000.0,
        "pages_per_s": 1.0, "faults_per_s": 2.0, "wp_faults_per_s": 0.0, "vs_mmap": 0.8,
        "vs_pread": null}]}"#;
    let (_, rows) = report::from_json(old).unwrap();
    assert_eq!(rows[0].seconds_each, [0.5]);
    assert_eq!(rows[0].vs_mmap_each, [0.8]);
    assert!(rows[0].vs_pread_each.is_empty());
    assert_eq!(report::time_cell(&rows[0]), "0.500");
}

/// Rows like the bench's: two workloads, several systems, one awkward name.
fn sample() -> Vec<Row> {
    vec![
        row("seq-read", "mmap", 4096, 2000.0),
        row("seq-read", "pread", 4096, 1800.0),
        row("seq-read", "umap", 4096, 350.0),
        row("seq-read", "umap", 64 << 10, 1650.0),
        row("seq-read", "umap", 1 << 20, 1500.0),
        row("r&w <\"odd\">", "mmap", 4096, 0.75),
        row("r&w <\"odd\">", "pwrite", 4096, 0.5),
        row("r&w <\"odd\">", "umap", 4096, 0.0),
    ]
}

#[test]
fn json_parses_and_holds_every_row() {
    let rows = sample();
    let mut with_nan = rows.clone();
    with_nan[0].faults_per_s = f64::NAN;
    let meta = serde_json::json!({ "kernel": "6.18", "cpus": 2 });
    let text = report::to_json(meta.clone(), &with_nan);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(doc["meta"], meta);
    let out = doc["rows"].as_array().expect("a rows array");
    assert_eq!(out.len(), rows.len());
    for (o, r) in out.iter().zip(&rows) {
        assert_eq!(o["workload"], r.workload.as_str());
        assert_eq!(o["system"], r.system.as_str());
        assert_eq!(o["page_bytes"], r.page_bytes);
        assert_eq!(o["mb_per_s"].as_f64(), Some(r.mb_per_s));
        assert_eq!(o["pages_per_s"].as_f64(), Some(r.pages_per_s));
        assert_eq!(o["seconds"].as_f64(), Some(r.seconds));
        assert_eq!(o["flush_seconds"].as_f64(), r.flush_seconds);
        assert_eq!(o["wp_faults_per_s"].as_f64(), r.wp_faults_per_s);
        assert_eq!(o["vs_mmap"].as_f64(), r.vs_mmap);
        assert!(o["vs_pread"].is_null());
    }
    assert!(
        out[0]["faults_per_s"].is_null(),
        "a non-finite number is null, not invalid JSON"
    );
}

#[test]
fn json_reads_back_into_the_same_rows() {
    let rows = sample();
    let meta = serde_json::json!({ "kernel": "6.18", "warm_page_cache": true });
    let (back_meta, back) = report::from_json(&report::to_json(meta.clone(), &rows)).unwrap();
    assert_eq!(back_meta, meta);
    assert_eq!(back, rows);
    // A non-finite number went out as null and comes back as NaN.
    let mut with_nan = rows.clone();
    with_nan[1].mb_per_s = f64::INFINITY;
    let (_, back) = report::from_json(&report::to_json(meta, &with_nan)).unwrap();
    assert!(back[1].mb_per_s.is_nan());
    // Not a report: a message, not a panic.
    let err = report::from_json("{\"meta\": {}}").unwrap_err();
    assert!(err.contains("rows"), "{err}");
    let err = report::from_json("{\"rows\": [{\"workload\": 1}]}").unwrap_err();
    assert!(err.contains("row 0") && err.contains("workload"), "{err}");
    assert!(report::from_json("not json").unwrap_err().contains("JSON"));
}

#[test]
fn unix_times_read_as_utc_dates() {
    assert_eq!(report::utc_minute(0), "1970-01-01 00:00 UTC");
    assert_eq!(report::utc_minute(951_782_400), "2000-02-29 00:00 UTC");
    assert_eq!(report::utc_minute(1_796_040_178), "2026-11-30 12:02 UTC");
    assert_eq!(report::utc_minute(4_102_444_740), "2099-12-31 23:59 UTC");
    assert_eq!(report::utc_minute(4_107_542_399), "2100-02-28 23:59 UTC");
}

#[test]
fn markdown_has_a_line_per_row_with_its_figures() {
    let rows = sample();
    let md = report::to_markdown(&rows);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines.len(),
        rows.len() + 2,
        "header, rule, one line per row:\n{md}"
    );
    assert!(lines[0].starts_with("| workload | system | page |"));
    for (line, r) in lines[2..].iter().zip(&rows) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 11, "{line}");
        assert_eq!(cells[0], r.workload);
        assert_eq!(cells[2], report::page_label(r.page_bytes));
        assert_eq!(cells[5], format!("{:.1}", r.mb_per_s));
        assert_eq!(
            cells[9],
            r.vs_mmap.map_or("-".to_string(), |v| format!("{v:.2}x"))
        );
        assert_eq!(cells[10], "-");
    }
    // A `|` in a name cannot break the table.
    let mut odd = rows[..1].to_vec();
    odd[0].system = "a|b".into();
    let md = report::to_markdown(&odd);
    assert!(md.contains("a\\|b"), "{md}");
}

#[test]
fn svg_is_well_formed_with_a_proportional_bar_per_row() {
    let rows = sample();
    let svg = report::to_svg("title & <more>", "sub \"title\"", &rows);
    let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let title = root
        .children()
        .find(|n| n.has_tag_name("title"))
        .and_then(|n| n.text());
    assert_eq!(title, Some("title & <more>"));

    let bars: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("bar"))
        .collect();
    assert_eq!(bars.len(), rows.len(), "one bar per row");
    let num = |n: &roxmltree::Node, a: &str| -> f64 {
        n.attribute(a)
            .unwrap_or_else(|| panic!("bar without {a}"))
            .parse()
            .unwrap()
    };
    for (bar, r) in bars.iter().zip(&rows) {
        assert_eq!(bar.attribute("data-workload"), Some(r.workload.as_str()));
        assert_eq!(
            bar.attribute("data-series").map(String::from),
            Some(r.series())
        );
        assert_eq!(num(bar, "data-mb-per-s"), r.mb_per_s);
        // Bars stand on a common baseline.
        let bottom = num(bar, "y") + num(bar, "height");
        let first_bottom = num(&bars[0], "y") + num(&bars[0], "height");
        assert!((bottom - first_bottom).abs() < 0.2, "bar bottoms differ");
    }
    // Within a panel, height / MB/s is the same for every bar; the tallest bar is the largest.
    for workload in ["seq-read", "r&w <\"odd\">"] {
        let panel: Vec<_> = bars
            .iter()
            .filter(|b| b.attribute("data-workload") == Some(workload))
            .collect();
        let scale: Vec<f64> = panel
            .iter()
            .filter(|b| num(b, "data-mb-per-s") > 0.0)
            .map(|b| num(b, "height") / num(b, "data-mb-per-s"))
            .collect();
        assert!(scale.len() >= 2);
        for s in &scale {
            assert!(
                (s / scale[0] - 1.0).abs() < 0.01,
                "{workload}: heights not proportional to MB/s: {scale:?}"
            );
        }
        assert!(panel
            .iter()
            .all(|b| num(b, "data-mb-per-s") > 0.0 || num(b, "height") == 0.0));
    }
    // The two panels have their own scales: the slow one's bars are not flattened.
    let tallest = |w: &str| {
        bars.iter()
            .filter(|b| b.attribute("data-workload") == Some(w))
            .map(|b| num(b, "height"))
            .fold(0.0, f64::max)
    };
    assert!(tallest("r&w <\"odd\">") > tallest("seq-read") / 2.0);

    // One legend entry per series (system and page size).
    let legend = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("legend"))
        .count();
    assert_eq!(legend, 6, "mmap, pread, pwrite, umap at three page sizes");
}

#[test]
fn an_empty_report_is_still_well_formed() {
    let svg = report::to_svg("nothing", "", &[]);
    roxmltree::Document::parse(&svg).expect("well-formed XML");
    let json = report::to_json(serde_json::json!({}), &[]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["rows"].as_array().map(Vec::len), Some(0));
}

#[test]
fn nice_steps_and_labels() {
    assert_eq!(report::nice_step(2217.0, 5), 500.0);
    assert_eq!(report::nice_step(599.0, 5), 200.0);
    assert_eq!(report::nice_step(0.75, 5), 0.2);
    assert_eq!(report::nice_step(0.0, 5), 1.0);
    assert_eq!(report::nice_step(f64::NAN, 5), 1.0);
    assert_eq!(report::page_label(4096), "4 KiB");
    assert_eq!(report::page_label(1 << 20), "1 MiB");
    assert_eq!(report::page_label(12 << 10), "12 KiB");
    assert_eq!(report::page_label(100), "100 B");
    assert_eq!(report::escape("a&<>\"'"), "a&amp;&lt;&gt;&quot;&apos;");
}
