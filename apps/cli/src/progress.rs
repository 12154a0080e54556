//! Progress reporting: a bar with rate and ETA on a terminal, plain periodic
//! lines otherwise.

use bdev_clone::Status;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, lines otherwise.
    Auto,
    Bar,
    Lines,
    None,
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn human_duration(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}h{:02}m{:02}s", secs / 3600, secs / 60 % 60, secs % 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

fn rate_eta(s: &Status) -> String {
    let eta = match s.eta_sec {
        Some(e) => human_duration(e),
        None => "-".into(),
    };
    format!("{:.1} MiB/s, ETA {eta}", mib(s.stats.rate_bytes_sec))
}

pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    interval: Duration,
    last: Instant,
    total: u64,
}

impl Progress {
    pub fn new(mode: ProgressMode, interval: Duration, total: u64) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let (bar, lines) = match mode {
            ProgressMode::Auto if tty => (true, false),
            ProgressMode::Auto => (false, true),
            ProgressMode::Bar => (true, false),
            ProgressMode::Lines => (false, true),
            ProgressMode::None => (false, false),
        };
        let bar = bar.then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                     {percent}% {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress {
            bar,
            lines,
            interval,
            last: Instant::now(),
            total,
        }
    }

    fn position(&self, s: &Status) -> u64 {
        (s.stats.regions_hydrated * s.geometry.region_size as u64).min(self.total)
    }

    pub fn update(&mut self, s: &Status) {
        if let Some(b) = &self.bar {
            if self.last.elapsed() >= Duration::from_millis(100) {
                b.set_position(self.position(s));
                b.set_message(rate_eta(s));
                self.last = Instant::now();
            }
        } else if self.lines && self.last.elapsed() >= self.interval {
            eprintln!(
                "bdev-clone: {} {:.1}% ({} of {} regions, {})",
                s.state.as_str(),
                s.percent(),
                s.stats.regions_hydrated,
                s.regions_total,
                rate_eta(s)
            );
            self.last = Instant::now();
        }
    }

    pub fn finish(&mut self, s: &Status, ok: bool) {
        if let Some(b) = self.bar.take() {
            b.set_position(self.position(s));
            if ok {
                b.finish_with_message("done");
            } else {
                b.abandon();
            }
        } else if self.lines {
            eprintln!(
                "bdev-clone: {} {:.1}% ({} of {} regions)",
                s.state.as_str(),
                s.percent(),
                s.stats.regions_hydrated,
                s.regions_total
            );
        }
    }
}
