//! `bdev-clone`: clone an image or block device into another, crash-safely
//! and resumably, with the same engine that runs inside SPDK.

mod backend;
mod commands;
mod dev;
mod hydrate;
mod meta;
mod progress;
mod uring;

use clap::{Parser, Subcommand};
use hydrate::{HydrateOpts, Interrupted, IoMode};
use progress::ProgressMode;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bdev-clone",
    version,
    about = "Clone an image or block device into another, crash-safely and resumably",
    long_about = "Clone an image or block device into another, crash-safely and resumably.\n\n\
                  Regions are copied from the source to the destination; a small metadata file \
                  records which regions are durable on the destination, so a run killed at any \
                  moment resumes where its last commit left it."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Copy the source to the destination; creates the metadata on first use
    /// and resumes from it afterwards.
    Hydrate {
        /// Source image or block device (read only)
        #[arg(short, long)]
        source: PathBuf,
        /// Destination image or block device, at least as large as the source
        #[arg(short, long)]
        dest: PathBuf,
        /// Metadata file (created when missing) or block device
        #[arg(short, long)]
        metadata: PathBuf,
        /// Region size (bytes, or with a K/M suffix); default 64K, or the
        /// stored size when resuming
        #[arg(short, long, value_parser = parse_size)]
        region_size: Option<u32>,
        /// Maximum hydration rate in MiB/s (0 = unlimited)
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Block size of regular files (default 512; block devices use their
        /// logical block size)
        #[arg(long, value_parser = parse_size)]
        block_size: Option<u32>,
        /// Regions being copied at once
        #[arg(long, default_value_t = 32)]
        threshold: u32,
        /// Contiguous regions per copy request
        #[arg(long, default_value_t = 8)]
        batch: u32,
        /// Commit interval in milliseconds
        #[arg(long, default_value_t = 1000)]
        commit_interval_ms: u64,
        /// Replace metadata that belongs to other devices or is corrupt
        /// (forgets the hydration progress)
        #[arg(long)]
        format: bool,
        /// Use buffered I/O instead of O_DIRECT
        #[arg(long)]
        buffered: bool,
        /// How requests reach the devices: io_uring (overlapped) when
        /// available, or one synchronous call at a time
        #[arg(long, value_enum, default_value_t = IoMode::Auto)]
        io: IoMode,

        /// How to show progress
        #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
        progress: ProgressMode,
        /// Seconds between progress lines when not on a terminal
        #[arg(long, default_value_t = 2.0)]
        progress_interval: f64,
    },
    /// Show progress, geometry and state from the metadata
    Status {
        /// Metadata file or device
        metadata: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Validate the metadata and, with the devices, every hydrated region;
    /// exits 0 only when clean
    Check {
        /// Metadata file or device
        metadata: PathBuf,
        /// Source to compare hydrated regions with
        #[arg(short, long, requires = "dest")]
        source: Option<PathBuf>,
        /// Destination to compare
        #[arg(short, long, requires = "source")]
        dest: Option<PathBuf>,
    },
    /// Generate a sample image, hydrate it with progress, show status and check
    Demo {
        /// Directory for the demo's files (default: a temporary one, removed after)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the sample image in MiB
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Maximum hydration rate in MiB/s (0 = unlimited)
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Keep the temporary directory
        #[arg(long)]
        keep: bool,
        /// Use buffered I/O instead of O_DIRECT
        #[arg(long)]
        buffered: bool,

        /// How to show progress
        #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
        progress: ProgressMode,
    },
}

/// "65536", "64K", "64KiB", "1M", "1MiB".
fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (like 65536, 64K or 1M)"))?;
    let mult = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => return Err(format!("'{s}' has an unknown unit (use K or M)")),
    };
    let v = n * mult;
    u32::try_from(v).map_err(|_| format!("'{s}' is too large"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Hydrate {
            source,
            dest,
            metadata,
            region_size,
            rate,
            block_size,
            threshold,
            batch,
            commit_interval_ms,
            format,
            buffered,
            io,
            progress,
            progress_interval,
        } => {
            if !(progress_interval.is_finite() && progress_interval >= 0.0) {
                anyhow::bail!("--progress-interval must be a number of seconds");
            }
            let out = hydrate::hydrate(&HydrateOpts {
                source,
                dest,
                metadata,
                region_size,
                block_size,
                rate,
                threshold,
                batch,
                commit_interval_ms,
                format,
                direct: !buffered,
                io,
                progress,
                progress_interval: Duration::from_secs_f64(progress_interval),
            })?;
            let secs = out.elapsed.as_secs_f64();
            println!(
                "hydrated: {} regions of {} KiB ({:.1} MiB); copied {:.1} MiB in {secs:.2}s \
                 ({:.1} MiB/s){}",
                out.regions_total,
                out.region_size / 1024,
                progress::mib(out.bytes_total),
                progress::mib(out.bytes_copied),
                progress::mib(out.bytes_copied) / secs.max(1e-9),
                if out.formatted {
                    String::new()
                } else {
                    format!(
                        "; resumed with {} regions already hydrated",
                        out.regions_at_start
                    )
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { metadata, json } => {
            commands::status(&metadata, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check {
            metadata,
            source,
            dest,
        } => {
            let clean = commands::check(&metadata, source.as_deref(), dest.as_deref())?;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Demo {
            dir,
            size_mib,
            rate,
            keep,
            buffered,
            progress,
        } => {
            let clean = commands::demo(&commands::DemoOpts {
                dir,
                size_mib,
                rate,
                keep,
                progress,
                direct: !buffered,
            })?;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
            // One line: clap's message without its usage block.
            let text = e.render().to_string();
            let msg: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let msg = msg.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            eprintln!("bdev-clone: error: {msg} (see bdev-clone --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bdev-clone: error: {e:#}");
            if e.is::<Interrupted>() {
                ExitCode::from(130)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("8192M").is_err());
    }

    #[test]
    fn cli_definition() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
