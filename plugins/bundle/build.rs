//! Each plugin crate's library exports the same two symbols as this bundle (the plugin-api
//! version and abi_stable's root-module header), and their objects come with the rlibs
//! linked here. Allowing multiple definitions keeps the first one the linker sees, the
//! bundle's own (its objects come before the rlibs); the daemon checks that the root module
//! it finds lists the bundle's plugins.
fn main() {
    println!("cargo::rustc-cdylib-link-arg=-Wl,--allow-multiple-definition");
}
