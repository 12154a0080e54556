//! One seeded run: a random clone, a random workload racing background
//! hydration, crashes at random instants, and the oracle's checks after each.

use crate::backend::SimBackend;
use crate::device::{Faults, SimDevice};
use crate::oracle::{FlushMark, Oracle, ReadMark, Value, Violation};
use bdev_clone::buffers::class_of;
use bdev_clone::metadata::commit::reserve_for;
use bdev_clone::metadata::Layout;
use bdev_clone::{
    CloneState, Data, Dev, DevOp, DeviceInfo, Engine, Geometry, HydrationOrder, IoError, Notice,
    OpenParams, Settings, UserIo, UserIoId, UserOp,
};
use fastrand::Rng;
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// User operations to issue before the final phase.
    pub ops: u32,
    pub max_crashes: u32,
    /// Inject device errors (some seeds then fail the clone on purpose).
    pub faults: bool,
    /// The destination acknowledges flushes without persisting: the oracle
    /// must catch it.
    pub lying_dest: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            ops: 300,
            max_crashes: 3,
            faults: seed % 4 == 3,
            lying_dest: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub steps: u64,
    pub crashes: u32,
    pub user_ops: u64,
    pub blocks_verified: u64,
    pub commits: u64,
    pub failed_states: u32,
    /// Regions copied ahead of the sweep because a user read them
    /// (hot-first hydration).
    pub hot_copies: u64,
    /// The backend's digest of every device request and completion.
    pub digest: u64,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed: {}\nreplay: cargo run -p bdev_clone_sim --release -- --seed {}",
            self.seed, self.message, self.seed
        )
    }
}

enum Pending {
    Read {
        offset: u64,
        mark: ReadMark,
    },
    Write {
        offset: u64,
        entries: Vec<usize>,
        fua: bool,
        len: u64,
    },
    Flush(FlushMark),
    Reset,
}

/// A user I/O the world submitted and awaits.
struct InFlightIo {
    io: UserIo,
    pending: Pending,
    /// `World::data_errors` when it was submitted.
    data_errors: u64,
    /// A device request carrying its own data failed.
    own_error: bool,
}

struct World {
    rng: Rng,
    cfg: SimConfig,
    engine: Option<Engine<SimBackend>>,
    oracle: Oracle,
    params: OpenParams,
    block_size: usize,
    blocks: u64,
    region_blocks: u64,
    pending: HashMap<u64, InFlightIo>,
    busy: Vec<bool>,
    next_id: u64,
    opened_once: bool,
    open_result: Option<Result<(), String>>,
    faults: [Faults; 3],
    out: Outcome,
    ops_left: u32,
    max_qd: usize,
    committed_before_crash: u64,
    /// Requests the source or the destination failed, ever, but for reads
    /// into a user's buffer (they fail only that user read).
    data_errors: u64,
    /// Requests the destination or the metadata failed, ever, and that count
    /// when the clone last opened: a commit fails only on one of those.
    commit_dev_errors: u64,
    commit_dev_errors_at_open: u64,
}

type Res<T> = Result<T, String>;

pub fn run(cfg: &SimConfig) -> Result<Outcome, Failure> {
    let mut w = World::new(cfg.clone());
    w.run().map_err(|message| Failure {
        seed: cfg.seed,
        message,
    })?;
    if let Some(message) = w.engine().backend_mut().over_limit.take() {
        return Err(Failure {
            seed: cfg.seed,
            message,
        });
    }
    w.out.digest = w.engine().backend_mut().digest;
    w.out.hot_copies += w.engine().status().stats.regions_hydrated_hot;
    Ok(w.out)
}

impl World {
    fn new(cfg: SimConfig) -> World {
        let mut rng = Rng::with_seed(cfg.seed);
        let bs = 512usize;
        let region_blocks = 1u64 << rng.u32(0..4);
        let blocks = rng.u64(16..400);
        let dest_blocks = blocks + rng.u64(0..16);
        let (meta_bs, page_size) = match rng.u32(0..4) {
            0 => (64, 64),
            1 => (64, 128),
            2 => (512, 512),
            _ => (128, 256),
        };
        let regions = blocks.div_ceil(region_blocks);
        let layout = Layout::new(meta_bs, page_size, regions);
        let meta_blocks = layout.total_bytes() / meta_bs as u64 + rng.u64(0..8);
        let source = SimDevice::new(bs, blocks, |b, out| Value::Source(b).fill(out));
        let mut dest = SimDevice::new(bs, dest_blocks, |b, out| Value::Garbage(b).fill(out));
        dest.faults.lying_flush = cfg.lying_dest;
        let meta = SimDevice::new(meta_bs as usize, meta_blocks, |_, out| out.fill(0));
        let faults = if cfg.faults {
            let f = |r| Faults {
                read_error: r,
                write_error: r,
                flush_error: r,
                lying_flush: false,
            };
            [f(rng.u32(1..30)), f(rng.u32(0..10)), f(rng.u32(0..5))]
        } else {
            Default::default()
        };
        let mut devs = [source, dest, meta];
        for (d, f) in devs.iter_mut().zip(faults.iter()) {
            let lying = d.faults.lying_flush;
            d.faults = f.clone();
            d.faults.lying_flush = lying;
        }
        // The engine's buffer cap: from the least it accepts (the commit
        // reserve and one region's copy: tight-memory mode, one seed in
        // four) to a little more, so that copies often find the pool empty
        // and commits must live on their reserve. The host holds the engine
        // to it.
        let region_bytes = region_blocks as usize * bs;
        let least = reserve_for(&layout) + class_of(region_bytes);
        let buf_limit = if rng.u32(0..4) == 0 {
            least
        } else {
            least + rng.usize(0..40_000.max(4 * region_bytes))
        };
        let backend = SimBackend::new(devs, buf_limit);
        let settings = Settings {
            hydration_enabled: rng.u32(0..5) != 0,
            hydration_threshold: rng.u32(1..9),
            hydration_batch_size: rng.u32(1..5),
            max_bandwidth_mb_sec: if rng.bool() { 0 } else { rng.u64(1..20) },
            max_bandwidth_busy_mb_sec: if rng.bool() { 0 } else { rng.u64(1..10) },
            commit_interval_ms: rng.u64(1..30),
            discard_passdown: rng.bool(),
            hydration_order: if rng.bool() {
                HydrationOrder::Sequential
            } else {
                HydrationOrder::HotFirst
            },
        };
        let mut params = OpenParams::new(
            DeviceInfo {
                block_size: bs as u32,
                num_blocks: blocks,
            },
            DeviceInfo {
                block_size: bs as u32,
                num_blocks: dest_blocks,
            },
            DeviceInfo {
                block_size: meta_bs,
                num_blocks: meta_blocks,
            },
            rng.u64(..),
        );
        params.region_size = Some(region_blocks as u32 * bs as u32);
        params.page_size = page_size;
        params.settings = settings;
        params.buffer_cap = buf_limit;
        let max_qd = rng.usize(1..9);
        let ops_left = cfg.ops;
        let mut w = World {
            rng,
            engine: None,
            oracle: Oracle::new(blocks),
            params,
            block_size: bs,
            blocks,
            region_blocks,
            pending: HashMap::new(),
            busy: vec![false; blocks as usize],
            next_id: 0,
            opened_once: false,
            open_result: None,
            faults,
            out: Outcome::default(),
            ops_left,
            max_qd,
            committed_before_crash: 0,
            data_errors: 0,
            commit_dev_errors: 0,
            commit_dev_errors_at_open: 0,
            cfg,
        };
        w.engine = Some(Engine::open(backend, w.params.clone()));
        w
    }

    fn engine(&mut self) -> &mut Engine<SimBackend> {
        self.engine.as_mut().unwrap()
    }

    fn backend(&mut self) -> &mut SimBackend {
        self.engine().backend_mut()
    }

    /// Completes in-flight device request `i` (faults apply) and hands the
    /// result to the engine; counts the device errors.
    fn execute(&mut self, i: usize) {
        let (dev, op) = {
            let f = &self.backend().inflight[i];
            (f.dev, f.op)
        };
        let (id, res) = {
            let World { engine, rng, .. } = self;
            engine.as_mut().unwrap().backend_mut().execute(i, rng)
        };
        if res.is_err() {
            // (the user I/O whose buffer the request carries, is it a read)
            let user = match op {
                DevOp::Read {
                    data: Data::User(u),
                    ..
                } => Some((u, true)),
                DevOp::Write {
                    data: Data::User(u),
                    ..
                } => Some((u, false)),
                _ => None,
            };
            if let Some(p) = user.and_then(|(u, _)| self.pending.get_mut(&u.0)) {
                p.own_error = true;
            }
            let user_read = matches!(user, Some((_, true)));
            // A read into a user's buffer fails that read only; a failed copy
            // or user write also fails the user writes waiting for it.
            if dev != Dev::Meta && !user_read {
                self.data_errors += 1;
            }
            if dev != Dev::Source {
                self.commit_dev_errors += 1;
            }
        }
        self.engine().complete(id, res);
    }

    fn run(&mut self) -> Res<()> {
        self.wait_open()?;
        while self.ops_left > 0 || !self.pending.is_empty() {
            self.step()?;
            if self.out.crashes < self.cfg.max_crashes && self.rng.u32(..600) == 0 {
                self.crash_and_recover()?;
            }
        }
        self.final_phase()
    }

    /// One scheduling decision.
    fn step(&mut self) -> Res<()> {
        self.out.steps += 1;
        if self.out.steps > 2_000_000 {
            return Err("no progress: the run did not finish".into());
        }
        let dt = self.rng.u64(1_000..300_000);
        self.backend().now += dt;
        let inflight = self.backend().inflight.len();
        match self.rng.u32(..12) {
            0..=2 if self.ops_left > 0 && self.pending.len() < self.max_qd => self.submit_random(),
            3..=7 if inflight > 0 => {
                let i = self.rng.usize(..inflight);
                self.execute(i);
            }
            8 => {
                let d = self.rng.usize(..3);
                let World { engine, rng, .. } = self;
                engine.as_mut().unwrap().backend_mut().devs[d].evict_one(rng);
            }
            _ => {
                self.engine().poll();
            }
        }
        self.drain()
    }

    /// Handles user completions and notices.
    fn drain(&mut self) -> Res<()> {
        let done = std::mem::take(&mut self.backend().completed);
        for (id, res) in done {
            self.user_done(id, res)?;
        }
        let notices = std::mem::take(&mut self.backend().notices);
        for n in notices {
            match n {
                Notice::Opened(r) => {
                    self.open_result = Some(r.map(|_| ()).map_err(|e| e.to_string()))
                }
                Notice::Failed(msg) => {
                    if !self.cfg.faults {
                        return Err(format!("clone failed without injected faults: {msg}"));
                    }
                    if self.commit_dev_errors == self.commit_dev_errors_at_open {
                        return Err(format!(
                            "clone failed ({msg}) though neither the destination nor the \
                             metadata failed a request since it opened"
                        ));
                    }
                    self.out.failed_states += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn user_done(&mut self, id: UserIoId, res: Result<(), IoError>) -> Res<()> {
        let Some(InFlightIo {
            io,
            pending: p,
            data_errors,
            own_error,
        }) = self.pending.remove(&id.0)
        else {
            return Err(format!("completion of unknown user I/O {id:?}"));
        };
        let data = self.backend().user_data.remove(&id.0).unwrap_or_default();
        if let Err(e) = res {
            let state = self.engine().state();
            let data_error = own_error || self.data_errors > data_errors;
            if !self.cfg.faults {
                return Err(format!(
                    "user I/O {io:?} failed with \"{e}\" without injected faults (state {state:?})"
                ));
            }
            if !error_explained(io.kind, e, state, own_error, data_error) {
                return Err(format!(
                    "user I/O {io:?} failed with \"{e}\" that nothing explains: the clone is \
                     {state:?}, and {} since it was submitted",
                    if own_error {
                        "its own device request failed"
                    } else if data_error {
                        "the source or destination failed a request (not its own)"
                    } else {
                        "neither the source nor the destination failed a request"
                    }
                ));
            }
        }
        match p {
            Pending::Read { offset, mark } => {
                if res.is_ok() {
                    self.oracle
                        .check_read(offset, &mark, &data, self.block_size)
                        .map_err(|v| v.to_string())?;
                }
            }
            Pending::Write {
                offset,
                entries,
                fua,
                len,
            } => {
                for b in offset..offset + len {
                    self.busy[b as usize] = false;
                }
                if res.is_ok() {
                    self.oracle.ack(offset, &entries, fua);
                }
            }
            Pending::Flush(mark) => {
                if res.is_ok() {
                    self.oracle.flush_completed(mark);
                }
            }
            Pending::Reset => {}
        }
        Ok(())
    }

    /// Records a user I/O about to be submitted.
    fn track(&mut self, io: UserIo, pending: Pending) {
        let data_errors = self.data_errors;
        self.pending.insert(
            io.id.0,
            InFlightIo {
                io,
                pending,
                data_errors,
                own_error: false,
            },
        );
    }

    fn new_id(&mut self) -> UserIoId {
        self.next_id += 1;
        UserIoId(self.next_id)
    }

    fn submit_random(&mut self) {
        self.ops_left -= 1;
        self.out.user_ops += 1;
        let regions = self.blocks.div_ceil(self.region_blocks);
        let r = self.rng.u64(..regions);
        let start = r * self.region_blocks;
        let rlen = self.region_blocks.min(self.blocks - start);
        let sub = |rng: &mut Rng| {
            let a = rng.u64(..rlen);
            let n = rng.u64(1..=rlen - a);
            (start + a, n)
        };
        let roll = self.rng.u32(..100);
        let (kind, offset, len) = match roll {
            0..=34 => {
                let (o, n) = sub(&mut self.rng);
                (UserOp::Read, o, n)
            }
            35..=54 => {
                let (o, n) = sub(&mut self.rng);
                (UserOp::Write { fua: false }, o, n)
            }
            55..=64 => (UserOp::Write { fua: false }, start, rlen),
            65..=69 => {
                let (o, n) = sub(&mut self.rng);
                (UserOp::Write { fua: true }, o, n)
            }
            70..=79 => (UserOp::Flush, 0, 0),
            80..=89 => {
                let o = self.rng.u64(..self.blocks);
                let n = self
                    .rng
                    .u64(1..=(self.blocks - o).min(4 * self.region_blocks));
                let k = if roll < 85 {
                    UserOp::Unmap
                } else {
                    UserOp::WriteZeroes
                };
                (k, o, n)
            }
            90..=92 => {
                let mut s = self.engine().settings().clone();
                s.hydration_enabled = !s.hydration_enabled;
                s.hydration_threshold = self.rng.u32(1..9);
                s.hydration_batch_size = self.rng.u32(1..5);
                if self.rng.u32(..4) == 0 {
                    s.hydration_order = match s.hydration_order {
                        HydrationOrder::Sequential => HydrationOrder::HotFirst,
                        HydrationOrder::HotFirst => HydrationOrder::Sequential,
                    };
                }
                self.engine().set_settings(s);
                return;
            }
            93 => (UserOp::Reset, 0, 0),
            _ => {
                let (o, n) = sub(&mut self.rng);
                (UserOp::Read, o, n)
            }
        };
        let id = self.new_id();
        let bs = self.block_size;
        let pending = match kind {
            UserOp::Read => {
                self.backend()
                    .user_data
                    .insert(id.0, vec![0u8; len as usize * bs]);
                Pending::Read {
                    offset,
                    mark: self.oracle.read_submitted(offset, len),
                }
            }
            UserOp::Flush => Pending::Flush(self.oracle.flush_submitted()),
            UserOp::Reset => Pending::Reset,
            UserOp::Write { .. } | UserOp::Unmap | UserOp::WriteZeroes => {
                if (offset..offset + len).any(|b| self.busy[b as usize]) {
                    self.ops_left += 1; // overlaps a write in flight: try another
                    self.out.user_ops -= 1;
                    return;
                }
                for b in offset..offset + len {
                    self.busy[b as usize] = true;
                }
                let values: Vec<Value> = (offset..offset + len)
                    .map(|b| match kind {
                        UserOp::Unmap => Value::Any,
                        UserOp::WriteZeroes => Value::Zero,
                        _ => Value::Write { id: id.0, block: b },
                    })
                    .collect();
                if let UserOp::Write { .. } = kind {
                    let mut data = vec![0u8; len as usize * bs];
                    for (v, chunk) in values.iter().zip(data.chunks_mut(bs)) {
                        v.fill(chunk);
                    }
                    self.backend().user_data.insert(id.0, data);
                }
                let entries = self.oracle.submit(offset, &values);
                Pending::Write {
                    offset,
                    entries,
                    fua: matches!(kind, UserOp::Write { fua: true }),
                    len,
                }
            }
        };
        let io = UserIo {
            id,
            kind,
            offset_blocks: offset,
            num_blocks: len,
        };
        self.track(io, pending);
        self.engine().submit(io);
    }

    /// Runs until the engine reports the outcome of opening.
    fn wait_open(&mut self) -> Res<()> {
        loop {
            self.open_result = None;
            let mut guard = 0;
            while self.open_result.is_none() {
                guard += 1;
                if guard > 100_000 {
                    return Err("open never finished".into());
                }
                let n = self.backend().inflight.len();
                if n == 0 {
                    return Err("open stalled with nothing in flight".into());
                }
                let i = self.rng.usize(..n);
                self.execute(i);
                self.drain()?;
            }
            match self.open_result.take().unwrap() {
                Ok(()) => {
                    self.opened_once = true;
                    let loaded = self.engine().status().stats.regions_hydrated;
                    if loaded < self.committed_before_crash {
                        return Err(format!(
                            "reload lost committed hydration: {loaded} regions loaded, {} were committed",
                            self.committed_before_crash
                        ));
                    }
                    return Ok(());
                }
                Err(e) if self.cfg.faults => {
                    // The fault clears (as after a repair) and the target restarts.
                    if self
                        .faults
                        .iter()
                        .all(|f| f.read_error == 0 && f.write_error == 0 && f.flush_error == 0)
                    {
                        return Err(format!("open failed with no faults left: {e}"));
                    }
                    self.faults = Default::default();
                    self.set_faults(false);
                    self.reopen();
                }
                Err(e) => return Err(format!("open failed: {e}")),
            }
        }
    }

    fn set_faults(&mut self, on: bool) {
        let faults = self.faults.clone();
        for (d, f) in self.backend().devs.iter_mut().zip(faults) {
            let lying = d.faults.lying_flush;
            d.faults = if on { f } else { Faults::default() };
            d.faults.lying_flush = lying;
        }
    }

    fn reopen(&mut self) {
        let mut backend = self.engine.take().unwrap().into_backend();
        backend.reset_after_crash();
        let mut params = self.params.clone();
        // A create that never finished is retried with format, as an operator would.
        params.format = !self.opened_once;
        params.nonce = self.rng.u64(..);
        self.engine = Some(Engine::open(backend, params));
        self.commit_dev_errors_at_open = self.commit_dev_errors;
    }

    /// Power loss at this instant, then restart, reload and verify every block.
    fn crash_and_recover(&mut self) -> Res<()> {
        self.out.crashes += 1;
        self.out.hot_copies += self.engine().status().stats.regions_hydrated_hot;
        self.committed_before_crash = self.engine().committed_regions();
        {
            let World { engine, rng, .. } = self;
            let backend = engine.as_mut().unwrap().backend_mut();
            for dev in [
                bdev_clone::Dev::Source,
                bdev_clone::Dev::Dest,
                bdev_clone::Dev::Meta,
            ] {
                let writes = backend.in_flight_writes(dev);
                backend.dev_mut(dev).crash(rng, &writes);
            }
        }
        self.pending.clear();
        self.busy.fill(false);
        self.reopen();
        self.wait_open()?;
        self.verify_all(true)
    }

    /// Reads every block through the clone and checks it against the oracle.
    fn verify_all(&mut self, after_crash: bool) -> Res<()> {
        let saved = self
            .backend()
            .devs
            .iter()
            .map(|d| d.faults.clone())
            .collect::<Vec<_>>();
        self.set_faults(false);
        let regions = self.blocks.div_ceil(self.region_blocks);
        let bs = self.block_size;
        for r in 0..regions {
            let start = r * self.region_blocks;
            let len = self.region_blocks.min(self.blocks - start);
            let id = self.new_id();
            self.backend()
                .user_data
                .insert(id.0, vec![0u8; len as usize * bs]);
            self.engine().submit(UserIo {
                id,
                kind: UserOp::Read,
                offset_blocks: start,
                num_blocks: len,
            });
            let data = loop {
                if let Some(pos) = self.backend().completed.iter().position(|(i, _)| *i == id) {
                    let (_, res) = self.backend().completed.remove(pos);
                    res.map_err(|e| format!("verification read of region {r} failed: {e}"))?;
                    break self.backend().user_data.remove(&id.0).unwrap();
                }
                let n = self.backend().inflight.len();
                if n == 0 {
                    self.engine().poll();
                    continue;
                }
                let i = self.rng.usize(..n);
                self.execute(i);
            };
            for (i, chunk) in data.chunks(bs).enumerate() {
                let b = start + i as u64;
                let res: Result<(), Violation> = if after_crash {
                    self.oracle.check_after_crash(b, chunk)
                } else {
                    let mark = self.oracle.read_submitted(b, 1);
                    self.oracle.check_read(b, &mark, chunk, bs)
                };
                res.map_err(|v| v.to_string())?;
                self.out.blocks_verified += 1;
            }
        }
        for (d, f) in self.backend().devs.iter_mut().zip(saved) {
            d.faults = f;
        }
        self.drain()
    }

    /// Faults clear, hydration runs to the end, and the destination must then
    /// hold exactly the expected image.
    fn final_phase(&mut self) -> Res<()> {
        self.set_faults(false);
        self.faults = Default::default();
        if matches!(
            self.engine().state(),
            CloneState::Failed | CloneState::ReadOnly
        ) {
            // Restart after the fault is repaired: resumes from the last commit.
            self.crash_and_recover()?;
        }
        let mut s = self.engine().settings().clone();
        s.hydration_enabled = true;
        s.max_bandwidth_mb_sec = 0;
        s.hydration_threshold = s.hydration_threshold.max(4);
        self.engine().set_settings(s);
        let regions = self.blocks.div_ceil(self.region_blocks);
        let mut guard = 0u64;
        while self.engine().status().stats.regions_hydrated < regions || !self.engine().idle() {
            guard += 1;
            if guard > 1_000_000 {
                let st = self.engine().status();
                let idle = self.engine().idle();
                return Err(format!(
                    "hydration never finished: {:?} of {regions}, state {:?}, idle {idle}",
                    st.stats, st.state
                ));
            }
            self.backend().now += 50_000;
            let n = self.backend().inflight.len();
            if n > 0 && self.rng.u32(..4) != 0 {
                let i = self.rng.usize(..n);
                self.execute(i);
            } else {
                self.engine().poll();
            }
            self.drain()?;
        }
        // A final user flush makes everything durable.
        let io = UserIo {
            id: self.new_id(),
            kind: UserOp::Flush,
            offset_blocks: 0,
            num_blocks: 0,
        };
        let pending = Pending::Flush(self.oracle.flush_submitted());
        self.track(io, pending);
        self.engine().submit(io);
        while !self.pending.is_empty() {
            let n = self.backend().inflight.len();
            if n == 0 {
                return Err("final flush stalled".into());
            }
            let i = self.rng.usize(..n);
            self.execute(i);
            self.drain()?;
        }
        self.verify_all(false)?;
        // The destination itself, on media, is the expected image.
        let lying = self.cfg.lying_dest;
        for b in 0..self.blocks {
            let media = self
                .backend()
                .dev(bdev_clone::Dev::Dest)
                .durable_block(b)
                .to_vec();
            if !lying {
                self.oracle
                    .check_settled(b, &media)
                    .map_err(|v| format!("destination on media: {v}"))?;
            }
        }
        self.out.commits = self.engine().status().stats.commits;
        let _ = Geometry::new;
        Ok(())
    }
}

/// Whether the engine may fail a user I/O of `kind` with `e` (its code says
/// when it does): `Io` for a read whose own device request failed (reads pass
/// through to one device, in every state); `Io` for a write, unmap or
/// write-zeroes whose own request failed or one it waited for (its region's
/// copy, a whole-region write: `data_error`, the source or destination failed
/// a request since it was submitted); `ReadOnly`, or `Io` when the commit it
/// waited for failed, for a write, flush, unmap or write-zeroes once the
/// clone is `Failed` or `ReadOnly`. A reset is passed to the destination,
/// which never fails it. `NoDevice` (opening, stopping) and `Invalid` (out of
/// range, across a region) never: the world submits only to an open clone,
/// within one region.
fn error_explained(
    kind: UserOp,
    e: IoError,
    state: CloneState,
    own_error: bool,
    data_error: bool,
) -> bool {
    let failed = matches!(state, CloneState::Failed | CloneState::ReadOnly);
    match kind {
        UserOp::Read => e == IoError::Io && own_error,
        UserOp::Write { .. } | UserOp::Unmap | UserOp::WriteZeroes => match e {
            IoError::Io => data_error || failed,
            IoError::ReadOnly => failed,
            _ => false,
        },
        UserOp::Flush => matches!(e, IoError::Io | IoError::ReadOnly) && failed,
        UserOp::Reset => e == IoError::Io && data_error,
    }
}
