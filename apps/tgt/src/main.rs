//! `bdev_clone_tgt`: SPDK's target application with bdev_clone built in.
//! Takes SPDK's usual app options (`-c`, `-r`, `-m`, `--no-huge -s`, ...).

fn main() {
    std::process::exit(bdev_clone_spdk::app::run(std::env::args().collect()));
}
