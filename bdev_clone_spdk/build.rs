//! Compiles the C shim: SPDK's registration macros (module and RPC methods
//! are registered from constructors) which bindgen cannot express.

fn main() {
    println!("cargo:rerun-if-changed=shim/clone_shim.c");
    let mut build = cc::Build::new();
    build
        .file("shim/clone_shim.c")
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter");
    if let Ok(inc) = std::env::var("DEP_SPDK_INCLUDE") {
        for dir in std::env::split_paths(&inc) {
            build.include(dir);
        }
    }
    // The constructors are reached by nothing else: link the archive whole,
    // or the linker drops them (see DESIGN.md, "the linker trap").
    build.link_lib_modifier("+whole-archive");
    build.compile("bdev_clone_shim");
}
