//! Running real SPDK processes for the tests: the project's target app, and
//! stock SPDK tools (spdk_tgt, spdk_dd, bdevperf) with libbdev_clone_spdk.so
//! preloaded. Everything is driven through JSON-RPC: the rpc.py plugin via
//! `spdk-rpc`, or JSON configs.

#![allow(dead_code)]

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where cargo put this test's binaries (and libbdev_clone_spdk.so).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn preload_lib() -> PathBuf {
    let p = target_dir().join("libbdev_clone_spdk.so");
    assert!(
        p.exists(),
        "{} missing: build bdev_clone_spdk first",
        p.display()
    );
    p
}

/// A malloc bdev of `mib` MiB with `bs`-byte blocks.
pub fn malloc(t: &Tgt, name: &str, mib: u64, bs: u64) {
    t.call(
        "bdev_malloc_create",
        Some(serde_json::json!({"name": name, "num_blocks": mib * 1024 * 1024 / bs, "block_size": bs})),
    )
    .unwrap();
}

/// Whether a module claims the bdev (false when it is gone).
pub fn claimed(t: &Tgt, bdev: &str) -> bool {
    t.call("bdev_get_bdevs", Some(serde_json::json!({"name": bdev})))
        .map(|v| v[0]["claimed"].as_bool().unwrap_or(false))
        .unwrap_or(false)
}

/// libbdev_clone_spdk.so built with fail points (the fault-injection
/// feature), which scripts/test builds into its own target directory.
pub fn fault_injection_lib() -> PathBuf {
    let p = target_dir()
        .parent()
        .unwrap()
        .join("fault-injection/debug/libbdev_clone_spdk.so");
    assert!(
        p.exists(),
        "{} missing: cargo build -p bdev_clone_spdk --features fault-injection \
         --target-dir target/fault-injection (scripts/test does)",
        p.display()
    );
    p
}

pub fn tgt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bdev_clone_tgt"))
}

/// A tool of the SPDK install, from PATH.
pub fn spdk_tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bdev_clone_it_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Tgt {
    child: Option<Child>,
    pub sock: PathBuf,
    pub log: PathBuf,
}

/// Several apps share the machine's cores in the tests.
pub const APP_ARGS: &[&str] = &[
    "--no-pci",
    "--no-huge",
    "-s",
    "1024",
    "--disable-cpumask-locks",
];

impl Tgt {
    /// The project's target app.
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> Tgt {
        Self::spawn(Command::new(tgt_bin()), dir, name, extra)
    }

    /// Stock spdk_tgt with the module preloaded.
    pub fn start_preloaded(dir: &Path, name: &str, extra: &[&str]) -> Tgt {
        let mut c = Command::new(spdk_tool("spdk_tgt").expect("spdk_tgt in PATH"));
        c.env("LD_PRELOAD", preload_lib());
        Self::spawn(c, dir, name, extra)
    }

    /// A stock SPDK app (`tool`: spdk_tgt, nvmf_tgt) preloading `lib`, with
    /// `env` added to its environment.
    pub fn start_preloaded_with(
        tool: &str,
        dir: &Path,
        name: &str,
        lib: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Tgt {
        let mut c = Command::new(spdk_tool(tool).unwrap_or_else(|| panic!("{tool} in PATH")));
        c.env("LD_PRELOAD", lib).envs(env.iter().copied());
        Self::spawn(c, dir, name, extra)
    }

    /// A stock SPDK app from PATH (nvmf_tgt, bdevperf -z, ...), without the
    /// module preloaded.
    pub fn start_tool(tool: &str, dir: &Path, name: &str, extra: &[&str]) -> Tgt {
        let bin = spdk_tool(tool).unwrap_or_else(|| panic!("{tool} is not in PATH"));
        Self::spawn(Command::new(bin), dir, name, extra)
    }

    fn spawn(mut cmd: Command, dir: &Path, name: &str, extra: &[&str]) -> Tgt {
        let sock = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&sock);
        let logf = std::fs::File::create(&log).unwrap();
        cmd.args(APP_ARGS)
            .arg("-r")
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let child = cmd.spawn().expect("start SPDK app");
        let t = Tgt {
            child: Some(child),
            sock,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if t.sock.exists() && t.call("spdk_get_version", None).is_ok() {
                return t;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("SPDK app did not come up; log:\n{}", t.log_text());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A raw JSON-RPC call on the socket: Ok(result) or Err((code, message)).
    pub fn call(&self, method: &str, params: Option<Value>) -> Result<Value, (i64, String)> {
        call_sock(&self.sock, method, params, 60)
    }

    /// A command of the rpc.py plugin through `spdk-rpc --plugin bdev_clone_rpc`.
    pub fn plugin(&self, args: &[&str]) -> Result<Value, String> {
        let out = rpc_client(&self.sock, args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(serde_json::from_str(&stdout).unwrap_or(Value::String(stdout.trim().to_string())))
    }

    pub fn clone_info(&self, name: &str) -> Value {
        self.call(
            "bdev_clone_get_clones",
            Some(serde_json::json!({"name": name})),
        )
        .unwrap()[0]
            .clone()
    }

    pub fn wait_state(&self, name: &str, state: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let info = self.clone_info(name);
            if info["state"] == state {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "clone never reached {state}: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// CPU time (user + system) the app used so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which is in parentheses).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    pub fn alive(&self) -> bool {
        self.call("spdk_get_version", None).is_ok()
    }

    /// SIGTERM and wait: SPDK shuts down cleanly (the clone commits).
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "app exited with {st}; log:\n{}",
                    self.log_text()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "app did not stop; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.log_text()
    }

    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn rpc_client(sock: &Path, args: &[&str]) -> Output {
    let client = spdk_tool("spdk-rpc").expect("spdk-rpc (SPDK's Python client) in PATH");
    Command::new(client)
        .env("PYTHONPATH", repo().join("python"))
        .arg("-s")
        .arg(sock)
        .args(["--plugin", "bdev_clone_rpc"])
        .args(args)
        .output()
        .unwrap()
}

/// A file whose every 512-byte block holds `tag` and its block number.
pub fn pattern_file(path: &Path, bytes: usize, tag: u8) -> Vec<u8> {
    let mut data = vec![0u8; bytes];
    for (b, block) in data.chunks_mut(512).enumerate() {
        for (i, x) in block.iter_mut().enumerate() {
            *x = tag ^ (b as u8).wrapping_mul(31) ^ (i as u8) ^ ((b >> 8) as u8);
        }
        block[..8].copy_from_slice(&(b as u64).to_le_bytes());
        block[8] = tag;
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// A JSON config: aio bdevs `src`, `dst` and `meta` over `dir`'s src.img,
/// dst.img and meta.img, then the given extra bdev methods.
pub fn config(dir: &Path, extra: Vec<Value>) -> Value {
    let mut cfg: Vec<Value> = ["src", "dst", "meta"]
        .iter()
        .map(|name| {
            serde_json::json!({"method": "bdev_aio_create",
                "params": {"name": name, "filename": dir.join(format!("{name}.img")), "block_size": 512}})
        })
        .collect();
    cfg.extend(extra);
    serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": cfg}]})
}

pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// A finished process's stdout followed by its stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// spdk_dd with the module preloaded; panics with its output on failure.
pub fn spdk_dd(conf: &Path, args: &[&str]) -> String {
    let dd = spdk_tool("spdk_dd").expect("spdk_dd in PATH");
    let out = Command::new(dd)
        .env("LD_PRELOAD", preload_lib())
        .args(APP_ARGS)
        .arg("--json")
        .arg(conf)
        .args(args)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "spdk_dd {args:?} failed:\n{text}");
    text
}

/// An NVMe/TCP listen address on 127.0.0.1.
pub fn tcp_listen(port: &str) -> Value {
    serde_json::json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port})
}

/// An NVMe/TCP transport and subsystem `nqn` (any host) listening on `port`
/// of 127.0.0.1, no namespace yet.
pub fn nvmf_tcp_subsystem(t: &Tgt, nqn: &str, serial: &str, port: &str) {
    t.call(
        "nvmf_create_transport",
        Some(serde_json::json!({"trtype": "TCP"})),
    )
    .unwrap();
    t.call(
        "nvmf_create_subsystem",
        Some(serde_json::json!({"nqn": nqn, "allow_any_host": true, "serial_number": serial})),
    )
    .unwrap();
    t.call(
        "nvmf_subsystem_add_listener",
        Some(serde_json::json!({"nqn": nqn, "listen_address": tcp_listen(port)})),
    )
    .unwrap();
}

/// Exports `bdev` as a namespace of subsystem `nqn`.
pub fn nvmf_add_ns(t: &Tgt, nqn: &str, bdev: &str) {
    t.call(
        "nvmf_subsystem_add_ns",
        Some(serde_json::json!({"nqn": nqn, "namespace": {"bdev_name": bdev}})),
    )
    .unwrap();
}

/// One JSON-RPC call on a socket, waiting up to `secs` for the answer.
pub fn call_sock(
    sock: &Path,
    method: &str,
    params: Option<Value>,
    secs: u64,
) -> Result<Value, (i64, String)> {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(sock).map_err(|e| (0, e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut req = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method});
    if let Some(p) = params {
        req["params"] = p;
    }
    s.write_all(req.to_string().as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk).map_err(|e| (0, e.to_string()))?;
        if n == 0 {
            return Err((0, "connection closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
            return match v.get("error") {
                Some(e) => Err((
                    e["code"].as_i64().unwrap_or(0),
                    e["message"].as_str().unwrap_or("").to_string(),
                )),
                None => Ok(v["result"].clone()),
            };
        }
    }
}
