//! A hand-driven engine over simulated devices, for targeted tests: submit
//! I/O, run it to completion in FIFO order, inspect the device trace.

use crate::backend::{SimBackend, TraceEvent};
use crate::device::SimDevice;
use crate::oracle::Value;
use bdev_clone::metadata::Layout;
use bdev_clone::{
    Dev, DeviceInfo, Engine, IoResult, Notice, OpenError, OpenInfo, OpenParams, UserIo, UserIoId,
    UserOp,
};

pub struct Harness {
    pub engine: Engine<SimBackend>,
    next: u64,
}

/// Devices for a harness: source of `blocks` 512-byte blocks filled with
/// `Value::Source`, destination of garbage, blank metadata.
pub fn devices(blocks: u64, dest_blocks: u64, meta_bytes: u64) -> [SimDevice; 3] {
    [
        SimDevice::new(512, blocks, |b, out| Value::Source(b).fill(out)),
        SimDevice::new(512, dest_blocks, |b, out| Value::Garbage(b).fill(out)),
        SimDevice::new(512, meta_bytes / 512, |_, out| out.fill(0)),
    ]
}

pub fn params_for(devs: &[SimDevice; 3], region_size: u32) -> OpenParams {
    let info = |d: &SimDevice| DeviceInfo {
        block_size: d.block_size as u32,
        num_blocks: d.num_blocks,
    };
    let mut p = OpenParams::new(info(&devs[0]), info(&devs[1]), info(&devs[2]), 0xC0FFEE);
    p.region_size = Some(region_size);
    p.settings.hydration_enabled = false;
    p
}

/// Bytes of metadata a clone of `regions` regions needs with 4 KiB pages.
pub fn meta_bytes_for(regions: u64) -> u64 {
    Layout::new(512, 4096, regions).total_bytes()
}

impl Harness {
    /// Opens a clone and runs the open to its end.
    pub fn open(
        devs: [SimDevice; 3],
        params: OpenParams,
    ) -> (Harness, Result<OpenInfo, OpenError>) {
        let mut backend = SimBackend::new(devs, 64 << 20);
        backend.trace = Some(Vec::new());
        let mut h = Harness {
            engine: Engine::open(backend, params),
            next: 0,
        };
        h.run();
        let r = h
            .take_notices()
            .into_iter()
            .find_map(|n| match n {
                Notice::Opened(r) => Some(r),
                _ => None,
            })
            .expect("open reported");
        (h, r)
    }

    pub fn backend(&mut self) -> &mut SimBackend {
        self.engine.backend_mut()
    }

    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.backend().notices)
    }

    pub fn trace(&mut self) -> Vec<TraceEvent> {
        std::mem::take(self.backend().trace.as_mut().unwrap())
    }

    /// Completes every request in submission order until nothing is left.
    pub fn run(&mut self) {
        let mut rng = fastrand::Rng::with_seed(0);
        while !self.engine.backend_mut().inflight.is_empty() {
            let (id, res) = self.engine.backend_mut().execute(0, &mut rng);
            self.engine.complete(id, res);
        }
    }

    /// Submits one user I/O (data for writes as `Value`s) and runs it.
    pub fn io(
        &mut self,
        kind: UserOp,
        offset: u64,
        len: u64,
        values: &[Value],
    ) -> (IoResult, Vec<u8>) {
        self.next += 1;
        let id = UserIoId(self.next);
        let mut data = vec![0u8; len as usize * 512];
        for (v, chunk) in values.iter().zip(data.chunks_mut(512)) {
            v.fill(chunk);
        }
        self.backend().user_data.insert(id.0, data);
        self.engine.submit(UserIo {
            id,
            kind,
            offset_blocks: offset,
            num_blocks: len,
        });
        self.run();
        let pos = self
            .backend()
            .completed
            .iter()
            .position(|(i, _)| *i == id)
            .expect("user I/O completed");
        let (_, res) = self.backend().completed.remove(pos);
        let data = self.backend().user_data.remove(&id.0).unwrap_or_default();
        (res, data)
    }

    pub fn read_values(&mut self, offset: u64, len: u64) -> Vec<Option<Value>> {
        let (res, data) = self.io(UserOp::Read, offset, len, &[]);
        res.expect("read");
        data.chunks(512).map(Value::decode).collect()
    }

    /// Polls with the clock moving until `done` or `max` polls.
    pub fn poll_until(&mut self, max: u32, mut done: impl FnMut(&mut Harness) -> bool) -> bool {
        for _ in 0..max {
            if done(self) {
                return true;
            }
            self.backend().now += 1_000_000;
            self.engine.poll();
            self.run();
        }
        done(self)
    }

    /// Power loss: caches dropped, nothing in flight lands. Returns the devices.
    pub fn crash(mut self) -> [SimDevice; 3] {
        let mut rng = fastrand::Rng::with_seed(7);
        for d in [Dev::Source, Dev::Dest, Dev::Meta] {
            self.backend().dev_mut(d).crash(&mut rng, &[]);
        }
        let SimBackend { devs, .. } = self.engine.into_backend();
        devs
    }
}
