//! Writes `umap.pc` (pkg-config) next to the built library, in `target/<profile>/`, pointing
//! at this crate's `include/` and at that directory. A build script may only write to
//! `OUT_DIR` by convention; the profile directory is three levels above it
//! (`target/<profile>/build/umap-capi-<hash>/out`), where cargo puts `libumap.so` too.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=include/umap.h");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let Some(profile_dir) = out_dir.ancestors().nth(3) else {
        println!(
            "cargo::warning=unexpected OUT_DIR {}: umap.pc not written",
            out_dir.display()
        );
        return;
    };
    let version = std::env::var("CARGO_PKG_VERSION").expect("set by cargo");
    let pc = pkg_config_file(&manifest_dir.join("include"), profile_dir, &version);
    // Written only when it changes, so that the file's time does not trigger rebuilds.
    let path = profile_dir.join("umap.pc");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pc.as_str()) {
        if let Err(e) = std::fs::write(&path, pc) {
            println!("cargo::warning=cannot write {}: {e}", path.display());
        }
    }
}

fn pkg_config_file(include_dir: &Path, lib_dir: &Path, version: &str) -> String {
    format!(
        "# pkg-config file for umap-rs's C library (written by umap-capi/build.rs)\n\
         includedir={}\n\
         libdir={}\n\
         \n\
         Name: umap\n\
         Description: User-space paging through userfaultfd, with LLNL umap's C API (umap-rs)\n\
         Version: {version}\n\
         Cflags: -I${{includedir}}\n\
         Libs: -L${{libdir}} -lumap\n\
         Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc\n",
        include_dir.display(),
        lib_dir.display(),
    )
}
