//! The shape of the built modules that Envoy's memory depends on: no function body over
//! [`MAX_FUNCTION_BYTES`].
//!
//! Envoy's V8 compiles every function of a module with TurboFan when it loads it, and what
//! compiling the largest functions needs stays with Envoy's allocator afterwards. `wasm-opt -Oz`
//! alone inlines each function that has one caller whatever its size; it made a 36 KB
//! `proxy_on_configure` in `mesh_sidecar.wasm` and a 14 KB float formatter in every filter, which
//! held about 12 MiB of mesh_sidecar's RSS (README, "Wasm sizes"). `cargo xtask build` caps that
//! inlining; this test fails when a build or a change brings such a function back.

use integration::{filters_dir, wasm_path};
use wasmparser::{Parser, Payload};

/// The largest function body allowed, in bytes. The shipped modules' largest is about 7.8 KB
/// (regex_lite's parser in route_retries and mesh_sidecar).
const MAX_FUNCTION_BYTES: u64 = 12 * 1024;

/// The size of each function body of `wasm`, in bytes.
fn function_sizes(wasm: &[u8]) -> Vec<u64> {
    let mut sizes = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::CodeSectionEntry(body)) => {
                let range = body.range();
                sizes.push(range.end - range.start);
            }
            Ok(_) => {}
            Err(e) => panic!("not a wasm module: {e}"),
        }
    }
    sizes
}

#[test]
fn no_built_module_has_a_function_larger_than_the_cap() {
    let dir = filters_dir();
    let mut modules: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask build`)", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    modules.sort();
    // The shipped modules: the three policies and the one module holding them. `wasm_path`
    // panics when one is missing, so the check cannot pass on an empty directory.
    for (shipped, _) in toolkit::derive::POLICIES {
        wasm_path(shipped);
    }
    wasm_path(toolkit::derive::MODULE);
    let mut too_large = Vec::new();
    for path in &modules {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let sizes = function_sizes(&bytes);
        assert!(!sizes.is_empty(), "{}: no function bodies", path.display());
        let largest = sizes.iter().copied().max().unwrap_or(0);
        if largest > MAX_FUNCTION_BYTES {
            too_large.push(format!("{}: {largest} B", path.display()));
        }
    }
    assert!(
        too_large.is_empty(),
        "functions over {MAX_FUNCTION_BYTES} B (wasm-opt's one-caller inlining uncapped?): {}",
        too_large.join(", ")
    );
}

#[test]
fn a_body_is_measured_in_bytes() {
    // (module (func) (func (drop (i32.const 1))))
    let wasm = [
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
        0x03, 0x03, 0x02, 0x00, 0x00, // two functions of type 0
        0x0a, 0x0a, 0x02, // code: two bodies
        0x02, 0x00, 0x0b, // no locals, end
        0x05, 0x00, 0x41, 0x01, 0x1a, 0x0b, // no locals, i32.const 1, drop, end
    ];
    assert_eq!(function_sizes(&wasm), vec![2, 5]);
}
