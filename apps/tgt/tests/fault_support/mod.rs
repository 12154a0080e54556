//! Helpers of the fault and soak tests: SPDK's error-injection bdevs, exporting
//! a clone over NVMe/TCP on 127.0.0.1, and an SPDK initiator (spdk_dd) that
//! reads and writes it; a preloaded `bdevperf -z` driven over JSON-RPC.

#![allow(dead_code)]

use crate::common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const REGION: usize = 64 * 1024;

pub fn ok(t: &Tgt, method: &str, params: Value) -> Value {
    t.call(method, Some(params.clone()))
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}"))
}

pub fn aio(t: &Tgt, name: &str, file: &Path) {
    ok(
        t,
        "bdev_aio_create",
        json!({"name": name, "filename": file, "block_size": 512}),
    );
}

/// SPDK's error-injection bdev over `base`: named `EE_<base>`.
pub fn error_bdev(t: &Tgt, base: &str) -> String {
    ok(t, "bdev_error_create", json!({"base_name": base}));
    format!("EE_{base}")
}

/// Fails the next `num` I/Os of `io_type` (read, write, flush, unmap, all).
pub fn inject(t: &Tgt, ee: &str, io_type: &str, num: u32) {
    ok(
        t,
        "bdev_error_inject_error",
        json!({"name": ee, "io_type": io_type, "error_type": "failure", "num": num}),
    );
}

/// Stops every injected failure of `ee`.
pub fn clear(t: &Tgt, ee: &str) {
    ok(
        t,
        "bdev_error_inject_error",
        json!({"name": ee, "io_type": "clear", "error_type": "failure"}),
    );
}

/// A TCP port of its own for each export of this test process.
pub fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 30000 + (std::process::id() % 300) as u16 * 50;
    base + NEXT.fetch_add(1, Ordering::Relaxed) % 50
}

/// Exports `bdev` over NVMe/TCP on 127.0.0.1; returns the initiator's view.
pub fn export(t: &Tgt, dir: &Path, bdev: &str) -> Initiator {
    let port = port();
    let nqn = format!("nqn.2026-11.io.bdev-clone:{bdev}-{port}");
    // The transport may exist already (a second export).
    let _ = t.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
    ok(
        t,
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "allow_any_host": true}),
    );
    ok(
        t,
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}),
    );
    ok(
        t,
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
            "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
    let conf = dir.join(format!("initiator-{port}.json"));
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_set_options", "params": {"bdev_retry_count": 0}},
        {"method": "bdev_nvme_attach_controller", "params": {"name": "Nvme0", "trtype": "tcp",
         "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string(), "subnqn": nqn}},
        {"method": "bdev_wait_for_examine"}
    ]}]});
    write_json(&conf, &cfg);
    Initiator {
        conf,
        dir: dir.to_path_buf(),
        n: AtomicU16::new(0),
    }
}

/// spdk_dd over NVMe/TCP: the clone as a remote host sees it (`Nvme0n1`).
pub struct Initiator {
    /// The initiator's JSON config (attaches `Nvme0`).
    pub conf: PathBuf,
    dir: PathBuf,
    n: AtomicU16,
}

impl Initiator {
    fn dd(&self, args: &[&str]) -> Result<String, String> {
        let dd = spdk_tool("spdk_dd").expect("spdk_dd in PATH");
        let out = Command::new(dd)
            .args(APP_ARGS)
            .arg("--json")
            .arg(&self.conf)
            .args(args)
            .output()
            .unwrap();
        let text = output_text(&out);
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// spdk_dd exits 0 and writes zeroes when a read fails (and may when a
    /// write fails): a failed command shows only in its log, where the NVMe
    /// driver prints each command that completed with an error. Err when one
    /// of `op` (READ, WRITE) fell in blocks `lo..hi`.
    fn dd_checked(&self, args: &[&str], op: &str, lo: u64, hi: u64) -> Result<String, String> {
        let text = self.dd(args)?;
        let pat = format!("{op} sqid:");
        for line in text.lines() {
            let Some(at) = line.find(&pat) else { continue };
            let field = |name: &str| -> Option<u64> {
                let rest = &line[at..];
                let i = rest.find(name)? + name.len();
                rest[i..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            };
            if let (Some(lba), Some(len)) = (field(" lba:"), field(" len:")) {
                if lba < hi && lba + len > lo {
                    return Err(format!("{op} of blocks {lba}+{len} failed:\n{text}"));
                }
            }
        }
        Ok(text)
    }

    fn tmp(&self) -> PathBuf {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("io-{n}"))
    }

    /// Reads `count` regions from region `first`.
    pub fn read(&self, first: usize, count: usize) -> Result<Vec<u8>, String> {
        let f = self.tmp();
        let count_n = count;
        let (skip, count) = (first.to_string(), count.to_string());
        let lo = (first * REGION / 512) as u64;
        let hi = lo + (count_n * REGION / 512) as u64;
        self.dd_checked(
            &[
                "--ib",
                "Nvme0n1",
                "--of",
                f.to_str().unwrap(),
                "--bs",
                "65536",
                "--skip",
                &skip,
                "--count",
                &count,
            ],
            "READ",
            lo,
            hi,
        )?;
        Ok(std::fs::read(&f).unwrap())
    }

    /// Writes `data` at byte `offset` (both multiples of 4 KiB).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), String> {
        let f = self.tmp();
        std::fs::write(&f, data).unwrap();
        let bs = if offset.is_multiple_of(REGION) && data.len().is_multiple_of(REGION) {
            REGION
        } else {
            4096
        };
        let (seek, count, bs) = (
            (offset / bs).to_string(),
            (data.len() / bs).to_string(),
            bs.to_string(),
        );
        let lo = (offset / 512) as u64;
        let hi = lo + (data.len() / 512) as u64;
        self.dd_checked(
            &[
                "--if",
                f.to_str().unwrap(),
                "--ob",
                "Nvme0n1",
                "--bs",
                &bs,
                "--seek",
                &seek,
                "--count",
                &count,
            ],
            "WRITE",
            lo,
            hi,
        )
        .map(|_| ())
    }
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until get_clones for `name` satisfies `pred`; returns it.
pub fn wait_info(t: &Tgt, name: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let info = t.clone_info(name);
        if pred(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "timed out; last state: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Read and write operations the bdev completed so far.
pub fn iostat(t: &Tgt, bdev: &str) -> (u64, u64) {
    let v = ok(t, "bdev_get_iostat", json!({"names": [bdev]}));
    let b = &v["bdevs"][0];
    (
        b["num_read_ops"].as_u64().unwrap_or(0),
        b["num_write_ops"].as_u64().unwrap_or(0),
    )
}

pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

/// A stock SPDK app (bdevperf -z, ...) with the module preloaded, driven
/// over its JSON-RPC socket.
pub struct App {
    child: Option<Child>,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl App {
    pub fn start(tool: &str, dir: &Path, name: &str, args: &[&str]) -> App {
        let bin = spdk_tool(tool).unwrap_or_else(|| panic!("{tool} not in PATH"));
        let sock = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&sock);
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .env("LD_PRELOAD", preload_lib())
            .args(APP_ARGS)
            .arg("-r")
            .arg(&sock)
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let a = App {
            child: Some(child),
            sock,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if a.sock.exists() && a.call("spdk_get_version", None).is_ok() {
                return a;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{tool} did not come up:\n{}", a.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn call(&self, method: &str, params: Option<Value>) -> Result<Value, (i64, String)> {
        call_sock(&self.sock, method, params, 60)
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit status (None: killed after `secs`).
    pub fn stop(mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub use crate::common::call_sock;
