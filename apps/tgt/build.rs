//! Links SPDK's application framework and every bdev, accel, sock and
//! keyring module plus the NVMe-oF target, as spdk_tgt has them.

const PACKAGES: &[&str] = &[
    "spdk_event",
    "spdk_event_bdev",
    "spdk_event_accel",
    "spdk_event_iobuf",
    "spdk_event_sock",
    "spdk_event_keyring",
    "spdk_event_vmd",
    "spdk_event_nvmf",
    "spdk_event_scheduler",
    "spdk_bdev_modules",
    "spdk_accel_modules",
    "spdk_sock_modules",
    "spdk_keyring_modules",
    "spdk_scheduler_modules",
    "spdk_env_dpdk",
    "spdk_syslibs",
];

fn main() {
    let mut libs = Vec::new();
    for p in PACKAGES {
        let lib = pkg_config::Config::new()
            .cargo_metadata(false)
            .probe(p)
            .unwrap_or_else(|e| panic!("SPDK package {p} not found by pkg-config: {e}"));
        for dir in lib.link_paths {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
        libs.extend(lib.libs);
    }
    // Module libraries are reached only through their constructors: with
    // Debian's default --as-needed the linker would drop them silently.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
    let mut seen = std::collections::HashSet::new();
    for l in libs {
        if seen.insert(l.clone()) {
            println!("cargo:rustc-link-arg-bins=-l{l}");
        }
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
}
