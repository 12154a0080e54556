//! Finds SPDK through pkg-config (or SPDK_DIR, a build or install prefix) and
//! generates bindings for the headers bdev_clone uses.

use std::env;
use std::path::PathBuf;

/// SPDK libraries the glue calls directly.
const LIBS: &[&str] = &[
    "spdk_bdev",
    "spdk_thread",
    "spdk_json",
    "spdk_jsonrpc",
    "spdk_rpc",
    "spdk_log",
    "spdk_util",
    "spdk_env_dpdk",
    "spdk_bdev_nvme",
];

fn fail(msg: &str) -> ! {
    eprintln!("\nspdk-sys: {msg}\n");
    eprintln!(
        "Point the build at an SPDK install: install SPDK where pkg-config finds it \
         (`pkg-config --exists spdk_bdev`, e.g. prefix /usr/local), or set SPDK_DIR to an \
         SPDK install prefix or build tree (with include/ and lib/ or build/lib/).\n\
         The rest of the workspace builds without SPDK: run plain `cargo test`.\n"
    );
    std::process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-changed=wrapper.h");
    let mut includes: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = env::var("SPDK_DIR") {
        let dir = PathBuf::from(dir);
        let lib = [dir.join("build/lib"), dir.join("lib")]
            .into_iter()
            .find(|p| p.join("libspdk_bdev.so").exists() || p.join("libspdk_bdev.a").exists())
            .unwrap_or_else(|| {
                fail(&format!(
                    "SPDK_DIR={} has no lib/libspdk_bdev",
                    dir.display()
                ))
            });
        includes.push(dir.join("include"));
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:lib_dir={}", lib.display());
        for l in LIBS {
            println!("cargo:rustc-link-lib=dylib={l}");
        }
    } else {
        let mut cfg = pkg_config::Config::new();
        cfg.cargo_metadata(false);
        let probe = cfg
            .probe("spdk_bdev")
            .unwrap_or_else(|e| fail(&format!("SPDK not found: {e}")));
        includes.extend(probe.include_paths.iter().cloned());
        for p in &probe.link_paths {
            println!("cargo:rustc-link-search=native={}", p.display());
            println!("cargo:lib_dir={}", p.display());
        }
        for l in LIBS {
            println!("cargo:rustc-link-lib=dylib={l}");
        }
        println!("cargo:version={}", probe.version);
    }
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("spdk_.*")
        .allowlist_type("spdk_.*")
        .allowlist_var("SPDK_.*")
        .allowlist_type("iovec")
        // Packed NVMe wire structures bindgen cannot express; bdev_clone
        // never looks inside them.
        .opaque_type("spdk_nvme_ctrlr_data")
        .opaque_type("spdk_bdev_ext_io_opts")
        .opaque_type("spdk_nvme_status")
        .opaque_type("spdk_nvme_cmd")
        .opaque_type("spdk_nvme_cpl")
        .opaque_type("spdk_nvmf_.*")
        .opaque_type("spdk_nvme_tcp_.*")
        .derive_default(true)
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for inc in &includes {
        builder = builder.clang_arg(format!("-I{}", inc.display()));
        println!("cargo:include={}", inc.display());
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on SPDK's headers: {e}")));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("write bindings");
}
