//! Each plugin crate's library exports the same two symbols as this bundle (the plugin-api
//! version and abi_stable's root-module header), and their objects come with the rlibs
//! linked here. Allowing multiple definitions keeps the first one the linker sees, the
//! bundle's own (its objects come before the rlibs). The daemon refuses a library named as a
//! bundle whose root module is one plugin's.
fn main() {
    println!("cargo::rustc-cdylib-link-arg=-Wl,--allow-multiple-definition");
}
