//! Every script in examples/ runs once, the way README.md says a user runs it:
//! `examples/<name>.sh`, SPDK's tools (nvmf_tgt, bdevperf, spdk_dd, spdk-rpc)
//! from PATH, the project's target app from this build (`BDEV_CLONE_TGT`, which
//! the scripts otherwise find under target/). Each must exit 0 and end with
//! `PASS`; what each one proves is checked in its output.
//!
//! Run alone (`--test-threads=1`): an example starts several SPDK apps.

mod common;

use common::*;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An example that has not finished after this long has hung.
const TIMEOUT: Duration = Duration::from_secs(600);

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    v.sort();
    v
}

/// Runs one example with `env`, in its own process group (killed whole on a
/// timeout, with the SPDK apps it started); returns its stdout and stderr.
fn run(script: &Path, env: &[(&str, String)]) -> (bool, String, String) {
    let mut cmd = Command::new(script);
    cmd.current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > TIMEOUT {
            let _ = Command::new("kill")
                .args(["-9", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "{} did not finish in {TIMEOUT:?}; its output so far:\n{}",
                script.display(),
                out_reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (
        status.success(),
        out_reader.join().unwrap(),
        err_reader.join().unwrap(),
    )
}

/// One row of the timeline CSV: t_sec, t_start_sec, "phase", kind,
/// percent_hydrated, iops, errors, "note" (the phase and the note are quoted:
/// they hold commas; the phase never holds a quote).
fn csv_row(line: &str) -> Vec<String> {
    let mut row: Vec<String> = line.splitn(3, ',').take(2).map(str::to_string).collect();
    let rest = &line[row[0].len() + row[1].len() + 2..];
    let end = 1 + rest[1..].find('"').expect("a quoted phase");
    row.push(rest[1..end].to_string());
    row.extend(rest[end + 2..].splitn(5, ',').map(str::to_string));
    assert_eq!(row.len(), 8, "{line}");
    row
}

/// examples/live-migration.sh: its timeline (stdout and the CSV it writes)
/// shows every fault and a clean byte-for-byte check.
fn check_live_migration(stdout: &str, csv: &Path) {
    let check = stdout
        .lines()
        .find(|l| l.contains(" check "))
        .unwrap_or_else(|| panic!("no check line:\n{stdout}"));
    assert!(
        check.contains("dst == clone read") && check.ends_with("OK"),
        "the byte-for-byte check: {check}"
    );
    let text = std::fs::read_to_string(csv)
        .unwrap_or_else(|e| panic!("TIMELINE_CSV {}: {e}\n{stdout}", csv.display()));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("t_sec,t_start_sec,phase,kind,percent_hydrated,iops,errors,note")
    );
    let rows: Vec<Vec<String>> = lines.map(csv_row).collect();
    let phases: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    for event in [
        "A killed (SIGKILL)",
        "A restarted",
        "B stopped (SIGTERM)",
        "B restarted (-c)",
        "source released",
        "after migration",
        "check",
    ] {
        assert!(
            phases.contains(&event),
            "no {event:?} in the timeline: {phases:?}"
        );
    }
    // C's phases: IOPS, no errors, a start before their end.
    let c: Vec<&Vec<String>> = rows.iter().filter(|r| r[3] == "phase").collect();
    assert!(c.len() >= 5, "C's phases: {c:?}");
    for r in &c {
        let (t0, t1): (f64, f64) = (r[1].parse().unwrap(), r[0].parse().unwrap());
        assert!(t0 < t1, "phase {r:?}");
        assert!(r[5].parse::<u64>().unwrap() > 0, "C idle in {r:?}");
        assert_eq!(r[6], "0", "C saw errors in {r:?}");
    }
    // Hydration went from (nearly) nothing to 100%, through A's death.
    let pct: Vec<f64> = rows.iter().filter_map(|r| r[4].parse().ok()).collect();
    assert!(pct[0] < 50.0 && *pct.last().unwrap() == 100.0, "{pct:?}");
    assert_eq!(rows.last().unwrap()[3], "check");
}

#[test]
fn every_example_runs_and_passes() {
    let scripts = examples();
    assert!(!scripts.is_empty(), "no examples/*.sh");
    let dir = scratch("examples");
    for script in scripts {
        let name = script.file_name().unwrap().to_str().unwrap().to_string();
        let csv = dir.join(format!("{name}.csv"));
        let base = 37000 + (std::process::id() % 1000) * 2;
        let env = [
            ("BDEV_CLONE_TGT", tgt_bin().display().to_string()),
            // Ports of this test, not the defaults another run may hold.
            ("PORT_A", base.to_string()),
            ("PORT_B", (base + 1).to_string()),
            ("TMPDIR", dir.display().to_string()),
            // The timeline goes here, not over bench/results/; no chart.
            ("TIMELINE_CSV", csv.display().to_string()),
            ("TIMELINE_PNG", String::new()),
        ];
        let t0 = Instant::now();
        let (ok, stdout, stderr) = run(&script, &env);
        assert!(ok, "{name} failed:\n{stdout}\n{stderr}");
        assert_eq!(
            stdout.lines().last(),
            Some("PASS"),
            "{name} did not end with PASS:\n{stdout}\n{stderr}"
        );
        if name == "live-migration.sh" {
            check_live_migration(&stdout, &csv);
        }
        eprintln!("{name}: PASS in {:.0?}", t0.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
