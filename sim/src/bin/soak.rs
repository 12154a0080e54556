//! Simulator soak: `cargo run -p bdev_clone_sim --release -- --seeds 100000`
//! or replay one seed with `--seed N`.

use bdev_clone_sim::{run, run_many, SimConfig};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut first = 0u64;
    let mut count = 10_000u64;
    let mut lying = false;
    let mut ops = None;
    let mut i = 0;
    let value = |i: usize| -> u64 {
        args.get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("{} needs a number", args[i]);
                std::process::exit(2)
            })
    };
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                let seed = value(i);
                let mut cfg = SimConfig::new(seed);
                if let Some(o) = ops {
                    cfg.ops = o;
                }
                cfg.lying_dest = lying;
                return match run(&cfg) {
                    Ok(o) => {
                        println!("seed {seed} ok: {o:?}");
                        ExitCode::SUCCESS
                    }
                    Err(f) => {
                        println!("{f}");
                        ExitCode::FAILURE
                    }
                };
            }
            "--seeds" => count = value(i),
            "--start" => first = value(i),
            "--ops" => ops = Some(value(i) as u32),
            "--lying-dest" => {
                lying = true;
                i += 1;
                continue;
            }
            "-h" | "--help" => {
                println!("usage: soak [--seeds N] [--start S] [--ops N] [--lying-dest] | --seed N");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other}; see --help");
                return ExitCode::from(2);
            }
        }
        i += 2;
    }
    let t = std::time::Instant::now();
    let (failures, total) = run_many(first, count, |c| {
        c.lying_dest = lying;
        if let Some(o) = ops {
            c.ops = o;
        }
    });
    for f in failures.iter().take(10) {
        println!("{f}");
    }
    println!(
        "{} seeds from {first} in {:.1}s: {} failed; {} crashes, {} user ops, {} blocks verified, {} commits, {} failed states, {} hot copies, digest {:016x}",
        count,
        t.elapsed().as_secs_f64(),
        failures.len(),
        total.crashes,
        total.user_ops,
        total.blocks_verified,
        total.commits,
        total.failed_states,
        total.hot_copies,
        total.digest
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
