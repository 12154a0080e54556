//! Real-process crash tests: `hydrate` is killed with SIGKILL at random
//! moments and resumed; committed metadata must only ever name regions whose
//! data is on the destination, and the final destination must equal the
//! source byte for byte. Set BDEV_CLONE_SEED to replay a run.

mod common;
use common::*;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The two tests are heavy on I/O: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn seed() -> u64 {
    let s = std::env::var("BDEV_CLONE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {s} (replay with BDEV_CLONE_SEED={s})");
    s
}

fn regions_hydrated(meta: &Path) -> Option<u64> {
    let o = run(&["status", p(meta), "--json"]);
    if !o.status.success() {
        // Killed before the format landed: no superblock yet.
        assert!(
            stderr(&o).contains("blank"),
            "status failed: {}",
            stderr(&o)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    Some(v["regions_hydrated"].as_u64().unwrap())
}

/// Runs `kills` hydrations killed with SIGKILL after a random delay each,
/// checking the committed metadata against the devices after every kill, then
/// one run to the end. `io`: the `--io` mode of every run.
fn kill_resume_loop(
    rng: &mut fastrand::Rng,
    src: &Path,
    dst: &Path,
    meta: &Path,
    kills: usize,
    rate_mib: u64,
    io: &str,
) {
    let mut last = 0;
    for i in 0..kills {
        let delay = Duration::from_millis(rng.u64(50..1500));
        let mut child = bin()
            .args(["hydrate", "-s", p(src), "-d", p(dst), "-m", p(meta)])
            .args([
                "--rate",
                &rate_mib.to_string(),
                "--commit-interval-ms",
                "200",
            ])
            .args(["--progress", "none", "--io", io])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while t.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = child.try_wait().unwrap();
        child.kill().ok(); // SIGKILL
        let st = child.wait().unwrap();
        let hydrated = regions_hydrated(meta);
        println!(
            "run {i}: killed after {delay:?} ({}), committed regions: {hydrated:?}",
            if finished.is_some() {
                format!("had already exited: {st}")
            } else {
                "SIGKILL".into()
            }
        );
        if let Some(h) = hydrated {
            assert!(
                h >= last,
                "committed progress went backwards: {last} -> {h}"
            );
            last = h;
            // Everything the metadata calls hydrated must already be on the
            // destination, whatever the destination held before.
            let o = run(&["check", p(meta), "--source", p(src), "--dest", p(dst)]);
            assert!(
                o.status.success(),
                "check after kill {i} not clean:\n{}{}",
                stdout(&o),
                stderr(&o)
            );
        }
    }
    assert!(last > 0, "no progress was committed before the final run");
    let o = run(&[
        "hydrate",
        "-s",
        p(src),
        "-d",
        p(dst),
        "-m",
        p(meta),
        "--progress",
        "lines",
        "--io",
        io,
    ]);
    assert!(o.status.success(), "final hydrate failed: {}", stderr(&o));
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
}

#[test]
fn sigkill_during_hydration_then_resume_256mib() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let t0 = Instant::now();
    let d = tmpdir("crash256");
    let (src, dst, meta) = (d.join("src.img"), d.join("dst.img"), d.join("meta"));
    let size = 256u64 << 20;
    write_pattern(&src, seed, size);
    std::fs::File::create(&dst).unwrap().set_len(size).unwrap();
    // ~4 s for the whole image at this rate: every kill lands mid-copy.
    // io_uring (as by default; `auto` would fall back silently).
    kill_resume_loop(&mut rng, &src, &dst, &meta, 6, 64, "uring");
    assert!(
        same_prefix(&src, &dst, size),
        "destination differs from source"
    );
    let o = run(&["check", p(&meta), "--source", p(&src), "--dest", p(&dst)]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("4096 hydrated regions"),
        "{}",
        stdout(&o)
    );
    assert_eq!(regions_hydrated(&meta), Some(4096));
    std::fs::remove_dir_all(&d).unwrap();
    println!("took {:?}", t0.elapsed());
}

#[test]
fn sigkill_with_garbage_destination_trusts_nothing_unhydrated() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xDEAD);
    let d = tmpdir("crashgarbage");
    let (src, dst, meta) = (d.join("src.img"), d.join("dst.img"), d.join("meta"));
    let size = 64u64 << 20;
    let tail = 1u64 << 20;
    write_pattern(&src, seed, size);
    // User-visible garbage everywhere on the destination, and a tail past the
    // source's end that the clone must never touch.
    write_pattern(&dst, seed.wrapping_add(1), size + tail);
    let before_tail = {
        let all = std::fs::read(&dst).unwrap();
        all[size as usize..].to_vec()
    };
    // The synchronous path (what runs where io_uring is not available).
    kill_resume_loop(&mut rng, &src, &dst, &meta, 5, 10, "sync");
    assert!(
        same_prefix(&src, &dst, size),
        "destination differs from source"
    );
    let after = std::fs::read(&dst).unwrap();
    assert_eq!(after.len() as u64, size + tail);
    assert!(
        after[size as usize..] == before_tail[..],
        "tail was modified"
    );
    let o = run(&["check", p(&meta), "--source", p(&src), "--dest", p(&dst)]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    std::fs::remove_dir_all(&d).unwrap();
}
