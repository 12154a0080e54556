//! Targeted engine behaviour on simulated devices: routing, the commit
//! protocol on the wire, metadata loading and failure states.

use bdev_clone::{CloneState, Dev, DevOp, IoError, OpenError, UserOp};
use bdev_clone_sim::backend::TraceEvent;
use bdev_clone_sim::harness::{devices, meta_bytes_for, params_for, Harness};
use bdev_clone_sim::oracle::Value;

const RS: u32 = 4096; // 8 blocks per region

fn w(id: u64, from: u64, n: u64) -> Vec<Value> {
    (from..from + n)
        .map(|b| Value::Write { id, block: b })
        .collect()
}

fn open(blocks: u64) -> Harness {
    let devs = devices(blocks, blocks, meta_bytes_for(blocks / 8 + 1) + 4096);
    let p = params_for(&devs, RS);
    let (h, r) = Harness::open(devs, p);
    r.expect("open");
    h
}

fn count(trace: &[TraceEvent], f: impl Fn(&TraceEvent) -> bool) -> usize {
    trace.iter().filter(|e| f(e)).count()
}

#[test]
fn reads_route_to_source_until_hydrated() {
    let mut h = open(64);
    assert_eq!(
        h.read_values(8, 8),
        (8..16).map(|b| Some(Value::Source(b))).collect::<Vec<_>>()
    );
    h.trace();
    // A partial write hydrates its region first: the rest of it reads as source.
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 10, 2, &w(1, 10, 2)).0,
        Ok(())
    );
    let t = h.trace();
    assert_eq!(
        count(&t, |e| matches!(
            e,
            TraceEvent::Submit(
                Dev::Source,
                DevOp::Read {
                    offset_blocks: 8,
                    num_blocks: 8,
                    ..
                }
            )
        )),
        1
    );
    let got = h.read_values(8, 8);
    for (i, v) in got.iter().enumerate() {
        let b = 8 + i as u64;
        let want = if (10..12).contains(&b) {
            Value::Write { id: 1, block: b }
        } else {
            Value::Source(b)
        };
        assert_eq!(*v, Some(want));
    }
    // Reads of the hydrated region now go to the destination.
    let t = h.trace();
    assert!(t
        .iter()
        .all(|e| !matches!(e, TraceEvent::Submit(Dev::Source, _))));
}

#[test]
fn partial_write_rides_in_its_region_copy() {
    let mut h = open(64);
    h.trace();
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 10, 2, &w(1, 10, 2)).0,
        Ok(())
    );
    // One source read and one destination write of the whole region, which
    // carries the user's blocks: no second write for them.
    let t = h.trace();
    let submits: Vec<_> = t
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Submit(dev, op) => Some((*dev, *op)),
            _ => None,
        })
        .collect();
    assert_eq!(submits.len(), 2, "{submits:?}");
    assert!(matches!(
        submits[0],
        (
            Dev::Source,
            DevOp::Read {
                offset_blocks: 8,
                num_blocks: 8,
                ..
            }
        )
    ));
    assert!(matches!(
        submits[1],
        (
            Dev::Dest,
            DevOp::Write {
                offset_blocks: 8,
                num_blocks: 8,
                fua: false,
                ..
            }
        )
    ));
    let want: Vec<_> = (8..16)
        .map(|b| {
            Some(if (10..12).contains(&b) {
                Value::Write { id: 1, block: b }
            } else {
                Value::Source(b)
            })
        })
        .collect();
    assert_eq!(h.read_values(8, 8), want);
    // It survives a flush and a crash like any write.
    assert_eq!(h.io(UserOp::Flush, 0, 0, &[]).0, Ok(()));
    let devs = h.crash();
    let p = params_for(&devs, RS);
    let (mut h, r) = Harness::open(devs, p);
    r.expect("reopen");
    assert_eq!(h.read_values(8, 8), want);
}

#[test]
fn failed_region_copy_fails_the_partial_write_and_hydrates_nothing() {
    for dev in [Dev::Source, Dev::Dest] {
        let mut h = open(64);
        let f = &mut h.backend().dev_mut(dev).faults;
        if dev == Dev::Source {
            f.read_error = 1000;
        } else {
            f.write_error = 1000;
        }
        assert_eq!(
            h.io(UserOp::Write { fua: false }, 10, 2, &w(1, 10, 2)).0,
            Err(IoError::Io),
            "{dev}"
        );
        assert_eq!(h.engine.status().stats.regions_hydrated, 0, "{dev}");
        let f = &mut h.backend().dev_mut(dev).faults;
        f.read_error = 0;
        f.write_error = 0;
        // The region reads as the source; a retry succeeds.
        assert_eq!(
            h.read_values(10, 2),
            vec![Some(Value::Source(10)), Some(Value::Source(11))]
        );
        assert_eq!(
            h.io(UserOp::Write { fua: false }, 10, 2, &w(2, 10, 2)).0,
            Ok(())
        );
        assert_eq!(
            h.read_values(9, 3),
            vec![
                Some(Value::Source(9)),
                Some(Value::Write { id: 2, block: 10 }),
                Some(Value::Write { id: 2, block: 11 })
            ]
        );
    }
}

#[test]
fn full_region_write_skips_the_copy() {
    let mut h = open(64);
    h.trace();
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 16, 8, &w(2, 16, 8)).0,
        Ok(())
    );
    let t = h.trace();
    assert_eq!(
        count(&t, |e| matches!(e, TraceEvent::Submit(Dev::Source, _))),
        0
    );
    assert_eq!(h.engine.status().stats.regions_hydrated, 1);
}

#[test]
fn reads_and_writes_crossing_a_region_are_refused() {
    let mut h = open(64);
    assert_eq!(h.io(UserOp::Read, 6, 4, &[]).0, Err(IoError::Invalid));
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 6, 4, &w(3, 6, 4)).0,
        Err(IoError::Invalid)
    );
    assert_eq!(h.io(UserOp::Read, 60, 8, &[]).0, Err(IoError::Invalid));
}

#[test]
fn flush_commits_with_destination_flushed_first_and_once() {
    let mut h = open(64);
    h.io(UserOp::Write { fua: false }, 1, 1, &w(4, 1, 1))
        .0
        .unwrap();
    h.trace();
    assert_eq!(h.io(UserOp::Flush, 0, 0, &[]).0, Ok(()));
    let t = h.trace();
    let dest_flushes = count(&t, |e| {
        matches!(e, TraceEvent::Submit(Dev::Dest, DevOp::Flush))
    });
    assert_eq!(
        dest_flushes, 1,
        "a user flush that commits is not flushed twice"
    );
    let flush_done = t
        .iter()
        .position(|e| matches!(e, TraceEvent::Complete(Dev::Dest, DevOp::Flush, true)))
        .unwrap();
    let first_meta_write = t
        .iter()
        .position(|e| matches!(e, TraceEvent::Submit(Dev::Meta, DevOp::Write { .. })))
        .unwrap();
    assert!(
        flush_done < first_meta_write,
        "metadata written before the destination flush completed: {t:?}"
    );
    // pages, flush, superblock, flush
    let meta: Vec<_> = t
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Submit(Dev::Meta, op) => Some(*op),
            _ => None,
        })
        .collect();
    assert!(
        matches!(
            meta[..],
            [
                DevOp::Write { .. },
                DevOp::Flush,
                DevOp::Write {
                    offset_blocks: 0 | 8,
                    ..
                },
                DevOp::Flush
            ]
        ),
        "{meta:?}"
    );
}

#[test]
fn commit_with_nothing_new_sends_nothing_to_metadata() {
    let mut h = open(64);
    h.trace();
    assert_eq!(h.io(UserOp::Flush, 0, 0, &[]).0, Ok(()));
    let t = h.trace();
    assert_eq!(
        count(&t, |e| matches!(e, TraceEvent::Submit(Dev::Meta, _))),
        0
    );
    assert_eq!(
        count(&t, |e| matches!(
            e,
            TraceEvent::Submit(Dev::Dest, DevOp::Flush)
        )),
        1
    );
}

#[test]
fn commit_cost_follows_regions_changed_not_device_size() {
    let mut bytes = Vec::new();
    for blocks in [1u64 << 10, 1 << 16] {
        let mut h = open(blocks);
        h.io(UserOp::Write { fua: false }, 0, 8, &w(5, 0, 8))
            .0
            .unwrap();
        let before = h.engine.status().stats.meta_bytes_written;
        h.io(UserOp::Flush, 0, 0, &[]).0.unwrap();
        bytes.push(h.engine.status().stats.meta_bytes_written - before);
    }
    assert_eq!(bytes[0], bytes[1]);
    assert_eq!(bytes[0], 4096 + 512, "one page and one superblock sector");
}

#[test]
fn periodic_commit_persists_hydration() {
    let mut h = open(256);
    let mut s = h.engine.settings().clone();
    s.hydration_enabled = true;
    s.commit_interval_ms = 5;
    h.engine.set_settings(s);
    assert!(h.poll_until(1000, |h| h.engine.state() == CloneState::Hydrated));
    assert!(h.poll_until(100, |h| h.engine.committed_regions() == 32));
    let devs = h.crash();
    let p = params_for(&devs, RS);
    let (h2, r) = Harness::open(devs, p);
    assert_eq!(r.unwrap().regions_hydrated, 32);
    assert_eq!(h2.engine.state(), CloneState::Hydrated);
}

#[test]
fn fua_write_is_durable_with_its_hydration() {
    let mut h = open(64);
    h.io(UserOp::Write { fua: true }, 3, 1, &w(6, 3, 1))
        .0
        .unwrap();
    let devs = h.crash();
    let p = params_for(&devs, RS);
    let (mut h2, r) = Harness::open(devs, p);
    r.unwrap();
    assert_eq!(
        h2.read_values(3, 1),
        vec![Some(Value::Write { id: 6, block: 3 })]
    );
}

#[test]
fn unflushed_write_may_be_lost_but_never_garbage() {
    let mut h = open(64);
    h.io(UserOp::Write { fua: false }, 3, 1, &w(7, 3, 1))
        .0
        .unwrap();
    let devs = h.crash();
    let p = params_for(&devs, RS);
    let (mut h2, _) = Harness::open(devs, p);
    assert_eq!(h2.read_values(3, 1), vec![Some(Value::Source(3))]);
}

#[test]
fn torn_superblock_falls_back_to_the_other_slot() {
    let mut h = open(64);
    h.io(UserOp::Write { fua: false }, 3, 1, &w(8, 3, 1))
        .0
        .unwrap();
    h.io(UserOp::Flush, 0, 0, &[]).0.unwrap(); // seq 2 in slot 1
    let mut devs = h.crash();
    // Corrupt slot 1 (the newest): slot 0 (seq 1) must be used; pages carry
    // their own versions, so the committed region survives.
    devs[2].write(8, &[0xAB; 512], true);
    let p = params_for(&devs, RS);
    let (mut h2, r) = Harness::open(devs, p);
    assert_eq!(r.unwrap().regions_hydrated, 1);
    assert_eq!(
        h2.read_values(3, 1),
        vec![Some(Value::Write { id: 8, block: 3 })]
    );
}

#[test]
fn both_superblocks_corrupt_is_refused_unless_format() {
    let h = open(64);
    let mut devs = h.crash();
    devs[2].write(0, &[0xAB; 512], true);
    let mut devs2 = devices(64, 64, meta_bytes_for(9) + 4096);
    let mut p = params_for(&devs, RS);
    for (i, d) in devs.iter_mut().enumerate() {
        let mut buf = vec![0u8; d.block_size * d.num_blocks as usize];
        d.read(0, &mut buf);
        devs2[i].write(0, &buf, true);
    }
    devs2[2].write(0, &[0x42; 512], true);
    devs2[2].write(8, &[0x42; 512], true);
    // Our magic, bad checksums: corrupt.
    let mut magic = [0u8; 512];
    magic[..8].copy_from_slice(b"BDVCLONE");
    devs2[2].write(0, &magic, true);
    devs2[2].write(8, &magic, true);
    let (_, r) = Harness::open(devs2, p.clone());
    assert!(matches!(r, Err(OpenError::Corrupt(_))), "{r:?}");
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("format"), "{msg}");
    // Foreign data: refused as not ours.
    devs[2].write(8, &[0xAB; 512], true);
    let (_, r) = Harness::open(devs, p.clone());
    assert!(matches!(r, Err(OpenError::Mismatch(_))), "{r:?}");
    let devs = devices(64, 64, meta_bytes_for(9) + 4096);
    p.format = true;
    let (_, r) = Harness::open(devs, p);
    assert!(r.unwrap().formatted);
}

#[test]
fn metadata_of_other_devices_is_refused() {
    let devs = devices(64, 64, meta_bytes_for(9) + 4096);
    let mut p = params_for(&devs, RS);
    p.source_id = [1; 16];
    p.source_name = "golden".into();
    let (h, r) = Harness::open(devs, p.clone());
    r.unwrap();
    let devs = h.crash();
    let mut other = p.clone();
    other.source_id = [2; 16];
    other.source_name = "other".into();
    let (h, r) = Harness::open(devs, other.clone());
    let e = r.unwrap_err().to_string();
    assert!(e.contains("golden") && e.contains("format"), "{e}");
    let devs = h.crash();
    other.region_size = Some(8192);
    other.source_id = p.source_id;
    let (h, r) = Harness::open(devs, other);
    assert!(r.unwrap_err().to_string().contains("region size"));
    // A different source size is a mismatch too.
    let mut devs = h.crash();
    devs[0] = bdev_clone_sim::device::SimDevice::new(512, 72, |b, o| Value::Source(b).fill(o));
    devs[1] = bdev_clone_sim::device::SimDevice::new(512, 72, |b, o| Value::Garbage(b).fill(o));
    let p2 = params_for(&devs, RS);
    let (_, r) = Harness::open(devs, p2);
    assert!(matches!(r, Err(OpenError::Mismatch(_))));
}

#[test]
fn bad_geometry_is_refused_with_a_reason() {
    let devs = devices(64, 32, 1 << 20);
    let p = params_for(&devs, RS);
    let (_, r) = Harness::open(devs, p);
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("smaller than the source"));
    let devs = devices(64, 64, 4096);
    let p = params_for(&devs, RS);
    let (_, r) = Harness::open(devs, p);
    assert!(matches!(r, Err(OpenError::MetaTooSmall { .. })));
    let devs = devices(64, 64, 1 << 20);
    let p = params_for(&devs, 3000);
    let (_, r) = Harness::open(devs, p);
    assert!(r.unwrap_err().to_string().contains("power of two"));
}

#[test]
fn destination_flush_failure_fails_the_clone_and_marks_nothing() {
    let mut h = open(64);
    h.io(UserOp::Write { fua: false }, 3, 1, &w(9, 3, 1))
        .0
        .unwrap();
    h.backend().dev_mut(Dev::Dest).faults.flush_error = 1000;
    assert_eq!(h.io(UserOp::Flush, 0, 0, &[]).0, Err(IoError::Io));
    assert_eq!(h.engine.state(), CloneState::Failed);
    assert!(h.engine.status().error.unwrap().contains("destination"));
    assert_eq!(h.engine.committed_regions(), 0);
    // Writes refused, reads served.
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 3, 1, &w(10, 3, 1)).0,
        Err(IoError::ReadOnly)
    );
    assert_eq!(
        h.read_values(3, 1),
        vec![Some(Value::Write { id: 9, block: 3 })]
    );
    assert_eq!(h.io(UserOp::Flush, 0, 0, &[]).0, Err(IoError::ReadOnly));
}

#[test]
fn metadata_write_failure_makes_the_clone_read_only() {
    let mut h = open(64);
    h.io(UserOp::Write { fua: false }, 3, 1, &w(11, 3, 1))
        .0
        .unwrap();
    h.backend().dev_mut(Dev::Meta).faults.write_error = 1000;
    assert_eq!(h.io(UserOp::Flush, 0, 0, &[]).0, Err(IoError::Io));
    assert_eq!(h.engine.state(), CloneState::ReadOnly);
    assert!(h.engine.status().error.unwrap().contains("metadata"));
}

#[test]
fn discard_of_whole_unhydrated_regions_skips_their_copy() {
    let mut h = open(64);
    assert_eq!(h.io(UserOp::Unmap, 4, 20, &[]).0, Ok(()));
    // Regions 1 and 2 are wholly covered: hydrated without a copy.
    assert_eq!(h.engine.status().stats.regions_hydrated, 2);
    // The partly covered regions still read as the source.
    assert_eq!(
        h.read_values(4, 4),
        (4..8).map(|b| Some(Value::Source(b))).collect::<Vec<_>>()
    );
}

#[test]
fn release_source_needs_full_hydration() {
    let mut h = open(64);
    assert!(h
        .engine
        .release_source()
        .unwrap_err()
        .contains("not fully hydrated"));
    let mut s = h.engine.settings().clone();
    s.hydration_enabled = true;
    h.engine.set_settings(s);
    assert!(h.poll_until(1000, |h| h.engine.state() == CloneState::Hydrated));
    h.engine.release_source().unwrap();
    h.run();
    assert!(h
        .take_notices()
        .contains(&bdev_clone::Notice::SourceReleased(Ok(()))));
    assert_eq!(h.engine.state(), CloneState::SourceReleased);
    h.trace();
    h.read_values(0, 8);
    assert!(h
        .trace()
        .iter()
        .all(|e| !matches!(e, TraceEvent::Submit(Dev::Source, _))));
    // Restart without a source: the metadata says it was released.
    let devs = h.crash();
    let mut p = params_for(&devs, RS);
    p.source = None;
    let (mut h2, r) = Harness::open(devs, p);
    assert!(r.unwrap().source_released);
    assert_eq!(h2.read_values(0, 1), vec![Some(Value::Source(0))]);
}

#[test]
fn rate_limit_bounds_background_hydration() {
    let mut h = open(2048); // 256 regions of 4 KiB = 1 MiB
    let mut s = h.engine.settings().clone();
    s.hydration_enabled = true;
    s.max_bandwidth_mb_sec = 1;
    h.engine.set_settings(s);
    // 100 polls 1 ms apart: 0.1 s at 1 MiB/s allows about 100 KiB (+ a burst).
    h.poll_until(100, |_| false);
    let bytes = h.engine.status().stats.bytes_hydrated;
    assert!((64 * 1024..=130 * 1024).contains(&bytes), "{bytes}");
}

#[test]
fn shutdown_commits_and_stops() {
    let mut h = open(64);
    h.io(UserOp::Write { fua: false }, 3, 1, &w(12, 3, 1))
        .0
        .unwrap();
    h.engine.shutdown();
    h.run();
    h.engine.poll();
    assert!(h.take_notices().contains(&bdev_clone::Notice::Stopped));
    assert_eq!(h.engine.committed_regions(), 1);
}

#[test]
fn a_device_is_recognised_by_uuid_or_by_name() {
    let devs = devices(64, 64, meta_bytes_for(9) + 4096);
    let mut p = params_for(&devs, RS);
    p.source_id = [1; 16];
    p.source_name = "golden".into();
    let (h, r) = Harness::open(devs, p.clone());
    r.unwrap();
    // Same name, new UUID (an aio bdev without a configured UUID): accepted.
    let devs = h.crash();
    let mut q = p.clone();
    q.source_id = [9; 16];
    let (h, r) = Harness::open(devs, q);
    assert!(!r.unwrap().formatted);
    // Same UUID, renamed: accepted.
    let devs = h.crash();
    let mut q = p.clone();
    q.source_name = "renamed".into();
    let (_, r) = Harness::open(devs, q);
    assert!(!r.unwrap().formatted);
}

#[test]
fn hydration_yields_to_user_io_and_runs_free_when_idle() {
    let run = |with_load: bool| {
        let mut h = open(2048); // 256 regions of 4 KiB
        let mut s = h.engine.settings().clone();
        s.hydration_enabled = true;
        s.max_bandwidth_mb_sec = 0;
        s.max_bandwidth_busy_mb_sec = 1;
        h.engine.set_settings(s);
        let mut i = 0;
        h.poll_until(100, |h| {
            if with_load {
                i = (i + 8) % 2048;
                h.io(UserOp::Read, i, 8, &[]).0.unwrap();
            }
            false
        });
        h.engine.status().stats.bytes_hydrated
    };
    let busy = run(true);
    let idle = run(false);
    // 100 polls 1 ms apart at 1 MiB/s: about 100 KiB (+ a burst) under load.
    assert!(
        busy <= 130 * 1024,
        "hydration did not yield to user I/O: {busy}"
    );
    assert_eq!(idle, 1 << 20, "idle hydration was throttled: {idle}");
}

#[test]
fn hydration_time_counts_only_while_hydrating() {
    let mut h = open(2048); // 256 regions of 4 KiB, hydration off
    let ms = |h: &mut Harness| h.engine.status().stats.hydration_ns / 1_000_000;
    h.poll_until(50, |_| false);
    assert_eq!(ms(&mut h), 0, "paused since open");
    let mut s = h.engine.settings().clone();
    s.hydration_enabled = true;
    s.max_bandwidth_mb_sec = 1; // 1 MiB at 1 MiB/s: about a second
    h.engine.set_settings(s.clone());
    h.poll_until(100, |_| false); // 100 ms of hydration
    assert_eq!(ms(&mut h), 100);
    s.hydration_enabled = false;
    h.engine.set_settings(s.clone());
    h.poll_until(300, |_| false); // paused: the clock stands still
    assert_eq!(ms(&mut h), 100);
    s.hydration_enabled = true;
    h.engine.set_settings(s);
    assert!(h.poll_until(5_000, |h| h.engine.state() == CloneState::Hydrated));
    let total = ms(&mut h);
    assert!(
        (900..=1_200).contains(&total),
        "{total} ms for 1 MiB at 1 MiB/s"
    );
    // Hydrated: the clock stops for good.
    h.poll_until(100, |_| false);
    assert_eq!(ms(&mut h), total);
}

/// Copies fill their share of a tight buffer cap, and a user flush still
/// commits at once: its page and superblock buffers come from the reserve.
#[test]
fn commits_never_starve_behind_copies() {
    use bdev_clone::buffers::class_of;
    use bdev_clone::metadata::commit::reserve_for;
    use bdev_clone::metadata::Layout;
    use bdev_clone::{UserIo, UserIoId};
    let blocks = 1024;
    let devs = devices(blocks, blocks, meta_bytes_for(blocks / 8 + 1) + 4096);
    let mut p = params_for(&devs, RS);
    let layout = Layout::new(512, p.page_size, blocks / 8);
    // Room for the commit reserve and exactly one region's copy.
    p.buffer_cap = reserve_for(&layout) + class_of(RS as usize);
    let (mut h, r) = Harness::open(devs, p);
    r.expect("open");
    // One hydrated region: its bitmap page is dirty.
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 1, 1, &w(1, 1, 1)).0,
        Ok(())
    );
    h.trace();
    // Partial writes into eight more regions, left in flight: one copy gets
    // the copies' whole share, the other seven wait for it.
    for k in 1..=8u64 {
        let id = UserIoId(100 + k);
        let mut data = vec![0u8; 512];
        Value::Write {
            id: 100 + k,
            block: k * 8,
        }
        .fill(&mut data);
        h.backend().user_data.insert(id.0, data);
        h.engine.submit(UserIo {
            id,
            kind: UserOp::Write { fua: false },
            offset_blocks: k * 8,
            num_blocks: 1,
        });
    }
    let reads = |t: &[TraceEvent]| count(t, |e| matches!(e, TraceEvent::Submit(Dev::Source, _)));
    let t = h.trace();
    assert_eq!(reads(&t), 1, "one copy fits the copies' share of the cap");
    h.engine.submit(UserIo {
        id: UserIoId(99),
        kind: UserOp::Flush,
        offset_blocks: 0,
        num_blocks: 0,
    });
    let t = h.trace();
    assert_eq!(
        count(&t, |e| *e == TraceEvent::Submit(Dev::Dest, DevOp::Flush)),
        1,
        "the commit started while the copies hold their share"
    );
    h.run();
    for _ in 0..10 {
        h.backend().now += 1_000_000;
        h.engine.poll();
        h.run();
    }
    let done = std::mem::take(&mut h.backend().completed);
    assert_eq!(done.len(), 9, "the flush and the eight writes completed");
    assert!(done.iter().all(|(_, r)| r.is_ok()), "{done:?}");
    for k in 1..=8u64 {
        assert_eq!(
            h.read_values(k * 8, 1),
            vec![Some(Value::Write {
                id: 100 + k,
                block: k * 8
            })]
        );
    }
}

/// The panic policy's engine half: after a panic the host calls
/// `abort_after_panic`; every user I/O the engine holds completes once, with
/// an error, and the clone stops cleanly.
#[test]
fn abort_after_panic_completes_every_user_io_once() {
    use bdev_clone::{UserIo, UserIoId};
    let mut h = open(256);
    // Region 0 hydrated: a read of it passes through to the destination.
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 0, 8, &w(1, 0, 8)).0,
        Ok(())
    );
    let ios = [
        (10, UserOp::Write { fua: false }, 9, 1), // partial: copy, merged
        (11, UserOp::Write { fua: false }, 10, 1), // waits on region 1's lock
        (12, UserOp::Write { fua: true }, 16, 8), // whole region, FUA
        (13, UserOp::Read, 24, 4),                // unhydrated: source
        (14, UserOp::Read, 0, 4),                 // hydrated: destination
        (15, UserOp::Unmap, 32, 24),              // fans out over 3 regions
        (16, UserOp::Flush, 0, 0),
    ];
    for (id, kind, off, n) in ios {
        h.backend()
            .user_data
            .insert(id, vec![0xAB; n as usize * 512]);
        h.engine.submit(UserIo {
            id: UserIoId(id),
            kind,
            offset_blocks: off,
            num_blocks: n,
        });
    }
    assert!(h.backend().completed.is_empty(), "all held by the engine");
    h.engine.abort_after_panic("injected");
    let mut done: Vec<_> = std::mem::take(&mut h.backend().completed);
    done.sort_by_key(|(id, _)| id.0);
    let ids: Vec<u64> = done.iter().map(|(id, _)| id.0).collect();
    assert_eq!(ids, (10..=16).collect::<Vec<_>>(), "each completed once");
    assert!(done.iter().all(|(_, r)| r.is_err()), "{done:?}");
    // What was sent to the devices completes into the engine, not the user.
    h.run();
    assert!(
        h.backend().completed.is_empty(),
        "{:?}",
        h.backend().completed
    );
    let s = h.engine.status();
    assert_eq!(s.state, CloneState::Failed);
    assert!(s.error.unwrap().contains("injected"));
    // Writes are refused, hydrated reads still served, and delete finishes.
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 0, 1, &w(2, 0, 1)).0,
        Err(IoError::ReadOnly)
    );
    assert_eq!(
        h.read_values(0, 1),
        vec![Some(Value::Write { id: 1, block: 0 })]
    );
    h.engine.shutdown();
    h.run();
    assert!(h.take_notices().contains(&bdev_clone::Notice::Stopped));
}

/// An idle clone asks for no polling: nothing to pace, commit or give back.
#[test]
fn idle_clone_wants_no_poll() {
    let mut h = open(64);
    // Opening's buffers are kept for a while, then given back.
    assert!(h.poll_until(2_000, |h| !h.engine.wants_poll()));
    assert!(!h.engine.poll(), "an idle poll starts nothing");
    // A write dirties a bitmap page: the commit interval needs the poller.
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 0, 8, &w(1, 0, 8)).0,
        Ok(())
    );
    assert!(h.engine.wants_poll());
    assert!(h.poll_until(3_000, |h| h.engine.committed_regions() == 1));
    assert!(h.poll_until(2_000, |h| !h.engine.wants_poll()));
    // Hydration running needs it too.
    let mut s = h.engine.settings().clone();
    s.hydration_enabled = true;
    h.engine.set_settings(s);
    assert!(h.engine.wants_poll());
}

/// Identity: a clone re-opened over its metadata keeps its UUID, name and
/// settings in the superblock; a different UUID asked for is refused.
#[test]
fn uuid_and_settings_live_in_the_superblock() {
    let blocks = 256;
    let devs = devices(blocks, blocks, meta_bytes_for(blocks / 8 + 1) + 4096);
    let mut p = params_for(&devs, RS);
    p.uuid = [0x11; 16];
    p.name = "clone0".into();
    p.settings.hydration_threshold = 7;
    let (mut h, r) = Harness::open(devs, p.clone());
    assert_eq!(r.expect("format").uuid, [0x11; 16]);
    // A settings change reaches the superblock at the next commit.
    let mut s = h.engine.settings().clone();
    s.max_bandwidth_mb_sec = 123;
    h.engine.set_settings(s.clone());
    assert!(h.poll_until(3_000, |h| !h.engine.wants_poll()));
    let devs = h.crash();
    let mut area = vec![0u8; 8192];
    devs[2].read(0, &mut area);
    let decode = bdev_clone::metadata::Superblock::decode;
    let sb = [decode(&area[..4096]), decode(&area[4096..])]
        .into_iter()
        .flatten()
        .max_by_key(|sb| sb.seq)
        .expect("a superblock");
    assert_eq!(sb.name, "clone0");
    assert_eq!(sb.settings.as_ref(), Some(&s));
    // Re-opened without asking for a UUID: the stored one.
    let mut again = p.clone();
    again.uuid = [0x22; 16];
    let (h, r) = Harness::open(devs, again.clone());
    assert_eq!(r.expect("resume").uuid, [0x11; 16]);
    // Asking for another one is refused.
    let devs = h.crash();
    again.require_uuid = true;
    let (_, r) = Harness::open(devs, again);
    match r {
        Err(OpenError::Mismatch(m)) => assert!(m.contains("11111111-1111"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Base events (issue 13): the source of a clone not fully hydrated goes
/// away: hydrated regions stay readable and writable, unhydrated ones fail
/// (reads and partial writes; a whole-region write needs no copy), and
/// hydration stops for good.
#[test]
fn losing_the_source_before_hydration_keeps_what_is_hydrated() {
    let mut h = open(64);
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 0, 8, &w(1, 0, 8)).0,
        Ok(())
    );
    assert!(h.engine.device_lost(Dev::Source), "the clone carries on");
    let s = h.engine.status();
    assert_eq!(s.state, CloneState::Paused);
    assert!(s.error.unwrap().contains("source device was removed"));
    h.trace();
    assert_eq!(
        h.read_values(0, 2),
        vec![
            Some(Value::Write { id: 1, block: 0 }),
            Some(Value::Write { id: 1, block: 1 })
        ]
    );
    assert_eq!(h.io(UserOp::Read, 8, 1, &[]).0, Err(IoError::Io));
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 9, 1, &w(2, 9, 1)).0,
        Err(IoError::Io)
    );
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 0, 1, &w(3, 0, 1)).0,
        Ok(())
    );
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 16, 8, &w(4, 16, 8)).0,
        Ok(())
    );
    // Hydration asked for again: nothing is read from the source.
    let mut st = h.engine.settings().clone();
    st.hydration_enabled = true;
    h.engine.set_settings(st);
    assert_eq!(h.engine.state(), CloneState::Paused);
    h.poll_until(50, |_| false);
    let t = h.trace();
    assert_eq!(
        count(&t, |e| matches!(e, TraceEvent::Submit(Dev::Source, _))),
        0,
        "{t:?}"
    );
    assert!(
        h.poll_until(3_000, |h| !h.engine.wants_poll()),
        "an idle clone again"
    );
}

/// The source of a fully hydrated clone goes away: it is released, and the
/// clone carries on.
#[test]
fn losing_the_source_of_a_hydrated_clone_releases_it() {
    let mut h = open(64);
    for r in 0..8 {
        assert_eq!(
            h.io(UserOp::Write { fua: false }, r * 8, 8, &w(r, r * 8, 8))
                .0,
            Ok(())
        );
    }
    assert!(h.poll_until(3_000, |h| h.engine.state() == CloneState::Hydrated));
    assert!(h.engine.device_lost(Dev::Source));
    h.run();
    assert!(h
        .take_notices()
        .contains(&bdev_clone::Notice::SourceReleased(Ok(()))));
    assert_eq!(h.engine.state(), CloneState::SourceReleased);
    assert_eq!(
        h.io(UserOp::Write { fua: false }, 3, 1, &w(9, 3, 1)).0,
        Ok(())
    );
}

/// A base removed while opening fails the open; resizes that break the
/// clone fail it.
#[test]
fn removal_while_opening_and_resizes() {
    let devs = devices(64, 64, meta_bytes_for(9) + 4096);
    let p = params_for(&devs, RS);
    let mut backend = bdev_clone_sim::backend::SimBackend::new(devs, 64 << 20);
    backend.trace = Some(Vec::new());
    let mut e = bdev_clone::Engine::open(backend, p);
    assert!(!e.device_lost(Dev::Dest));
    let mut rng = fastrand::Rng::with_seed(1);
    while !e.backend_mut().inflight.is_empty() {
        let (id, r) = e.backend_mut().execute(0, &mut rng);
        e.complete(id, r);
    }
    let opened = e.backend_mut().notices.iter().find_map(|n| match n {
        bdev_clone::Notice::Opened(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(
        opened,
        Some(Err(OpenError::Io(Dev::Dest, IoError::NoDevice)))
    );

    let mut h = open(64);
    assert!(
        h.engine.device_resized(Dev::Dest, 128),
        "a larger destination is fine"
    );
    assert!(h.engine.device_resized(Dev::Source, 64));
    assert!(!h.engine.device_resized(Dev::Source, 72));
    let s = h.engine.status();
    assert_eq!(s.state, CloneState::Failed);
    assert!(s
        .error
        .unwrap()
        .contains("source was resized from 64 to 72 blocks"));
    let mut h = open(64);
    assert!(!h.engine.device_resized(Dev::Dest, 63));
    assert!(h
        .engine
        .status()
        .error
        .unwrap()
        .contains("shrank to 63 blocks"));
}
