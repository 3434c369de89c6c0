//! `auditrelay demo`: Ctrl-C stops it cleanly, and a restart continues
//! where it stopped with nothing repeated and nothing missing.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn run_demo(dir: &std::path::Path, out: &std::path::Path, until_lines: usize) {
    let child = Command::new(binary())
        .args(["demo", "--backlog", "300", "--rate", "100", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(out.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "demo output", || {
        Delivered::count(out) >= until_lines
    });
    signal(child.id(), "INT");
    let status = wait_exit(child, Duration::from_secs(30));
    assert!(status.success(), "demo exited with {status}");
}

#[test]
fn demo_restarts_where_it_stopped() {
    let work = Workdir::new();
    let dir = work.path("auditrelay-demo");
    run_demo(&dir, &work.path("first.jsonl"), 350);
    // Events keep arriving in the (simulated) meantime.
    std::thread::sleep(Duration::from_millis(800));
    run_demo(&dir, &work.path("second.jsonl"), 100);

    let first = Delivered::read(&work.path("first.jsonl"));
    let second = Delivered::read(&work.path("second.jsonl"));
    // Both sources run side by side; no event of either repeats.
    let of = |d: &Delivered, kind: &str| -> Vec<String> {
        d.lines
            .iter()
            .filter(|l| l["source"]["kind"] == kind)
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    };
    let anaplan: Vec<String> = of(&first, "anaplan")
        .into_iter()
        .chain(of(&second, "anaplan"))
        .collect();
    assert!(
        !anaplan.is_empty(),
        "the demo's anaplan source delivered nothing"
    );
    let unique: std::collections::BTreeSet<&String> = anaplan.iter().collect();
    assert_eq!(
        unique.len(),
        anaplan.len(),
        "the restarted demo repeated anaplan events"
    );
    let first_asana = of(&first, "asana");
    let second_asana = of(&second, "asana");
    assert!(!first_asana.is_empty() && !second_asana.is_empty());
    let mut gids: Vec<u64> = first_asana
        .iter()
        .chain(&second_asana)
        .map(|id| id.parse().unwrap())
        .collect();
    let total = gids.len();
    gids.sort_unstable();
    gids.dedup();
    assert_eq!(gids.len(), total, "the restarted demo repeated events");
    // The simulator numbers its events consecutively: a gap is a loss.
    let span = gids[gids.len() - 1] - gids[0] + 1;
    assert_eq!(span, total as u64, "events are missing between the runs");
    let first_max: u64 = first_asana
        .iter()
        .map(|i| i.parse::<u64>().unwrap())
        .max()
        .unwrap();
    let second_min: u64 = second_asana
        .iter()
        .map(|i| i.parse::<u64>().unwrap())
        .min()
        .unwrap();
    assert_eq!(
        second_min,
        first_max + 1,
        "the second run starts right after the first"
    );
}
