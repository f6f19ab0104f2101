//! Gives the shared library a SONAME (`libsockeye.so.0.MINOR` while the major version is 0,
//! `libsockeye.so.MAJOR` after), so that installed copies can be versioned side by side.

fn main() {
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    let minor = env!("CARGO_PKG_VERSION_MINOR");
    let soname = if major == "0" {
        format!("libsockeye.so.0.{minor}")
    } else {
        format!("libsockeye.so.{major}")
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    println!("cargo:rerun-if-changed=build.rs");
}
