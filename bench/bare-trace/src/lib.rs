//! A trace header filter written directly on the `proxy-wasm` crate, without the meshwasm SDK:
//! the yardstick `cargo xtask bench` measures the SDK's own overhead against. It does exactly
//! the job of the Lua scenario (`bench/lua/trace.lua`): read `traceparent`, and write a child
//! `traceparent` plus the B3 multi headers (`x-b3-traceid`, `x-b3-spanid`,
//! `x-b3-parentspanid`, `x-b3-sampled`). No metrics, no span export. With the plugin
//! configuration `noop` it does nothing at all: the floor of any wasm filter in Envoy (a VM, a
//! context per request, a call into the VM per phase), which the bench measures too.
//!
//! The header logic ([`propagate`]) is plain Rust over the small [`Headers`] trait, so it is
//! unit-tested natively and its hostcalls are counted by the bench; the wasm32 entry points are
//! a thin adapter over `proxy_wasm::hostcalls`.

/// The request headers, as the proxy (or a test) holds them.
pub trait Headers {
    /// The first value of `name`; `None` when absent.
    fn get(&self, name: &str) -> Option<String>;
    /// Replaces every value of `name` with `value`.
    fn set(&mut self, name: &str, value: &str);
}

/// A small xorshift64* generator for span ids (not cryptographic; neither is Lua's).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (a zero seed is replaced, xorshift must not start at zero).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next value; never zero.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d).max(1)
    }
}

/// The parts of a valid version-00 `traceparent`: trace id, parent span id, sampled flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent<'a> {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: &'a str,
    /// 16 lowercase hex digits, not all zero.
    pub span_id: &'a str,
    /// The sampled bit of the trace flags.
    pub sampled: bool,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Parses `00-<trace id>-<span id>-<flags>` as the Lua script does: version 00 only,
/// lowercase hex of the right lengths, ids not all zero.
pub fn parse_traceparent(value: &str) -> Option<Parent<'_>> {
    let mut parts = value.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "00" || !lower_hex(trace_id, 32) {
        return None;
    }
    if !lower_hex(span_id, 16) || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Reads `traceparent` and writes the child context: a new span id under the same trace
/// (or a new sampled trace when the header is absent or invalid), in W3C and B3 multi form.
pub fn propagate(headers: &mut impl Headers, rng: &mut Rng) {
    let incoming = headers.get("traceparent");
    let parent = incoming.as_deref().and_then(parse_traceparent);
    let span_id = format!("{:016x}", rng.next_u64());
    let (trace_id, parent_id, sampled) = match parent {
        Some(p) => (p.trace_id.to_string(), Some(p.span_id), p.sampled),
        None => (
            format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
            None,
            true,
        ),
    };
    let flags = if sampled { "01" } else { "00" };
    headers.set("traceparent", &format!("00-{trace_id}-{span_id}-{flags}"));
    headers.set("x-b3-traceid", &trace_id);
    headers.set("x-b3-spanid", &span_id);
    if let Some(parent_id) = parent_id {
        headers.set("x-b3-parentspanid", parent_id);
    }
    headers.set("x-b3-sampled", if sampled { "1" } else { "0" });
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    //! The proxy-wasm contexts: a root that seeds the generator, and a stream context that
    //! runs [`propagate`](super::propagate) on the request headers.

    use std::cell::{Cell, RefCell};

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

    use super::{propagate, Headers, Rng};

    thread_local! {
        static RNG: RefCell<Rng> = RefCell::new(Rng::new(0));
        static NOOP: Cell<bool> = const { Cell::new(false) };
    }

    struct RequestHeaders;

    impl Headers for RequestHeaders {
        fn get(&self, name: &str) -> Option<String> {
            hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
        }
        fn set(&mut self, name: &str, value: &str) {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
    }

    pub(super) struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn on_vm_start(&mut self, _size: usize) -> bool {
            let nanos = hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            RNG.with(|r| *r.borrow_mut() = Rng::new(nanos));
            true
        }
        fn on_configure(&mut self, size: usize) -> bool {
            let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
                .ok()
                .flatten()
                .unwrap_or_default();
            NOOP.with(|n| n.set(config.trim_ascii() == b"noop"));
            true
        }
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream;

    impl Context for Stream {}

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
            if !NOOP.with(Cell::get) {
                RNG.with(|r| propagate(&mut RequestHeaders, &mut r.borrow_mut()));
            }
            Action::Continue
        }
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::wasm::Root)
        });
    }}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Map(Vec<(String, String)>, usize);

    impl Headers for Map {
        fn get(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
        fn set(&mut self, name: &str, value: &str) {
            self.1 += 1;
            self.0.retain(|(k, _)| k != name);
            self.0.push((name.to_string(), value.to_string()));
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn writes_a_child_of_a_valid_parent_in_both_formats() {
        let mut h = Map(vec![("traceparent".into(), TP.into())], 0);
        propagate(&mut h, &mut Rng::new(7));
        let tp = h.get("traceparent").unwrap_or_default();
        let span = h.get("x-b3-spanid").unwrap_or_default();
        assert_eq!(span.len(), 16);
        assert_ne!(span, "00f067aa0ba902b7");
        assert_eq!(tp, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01"));
        assert_eq!(
            h.get("x-b3-traceid").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            h.get("x-b3-parentspanid").as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(h.get("x-b3-sampled").as_deref(), Some("1"));
        assert_eq!(h.1, 5, "one get and five sets per request");
    }

    #[test]
    fn starts_a_new_trace_on_invalid_or_missing_input() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        let mut h = Map::default();
        propagate(&mut h, &mut Rng::new(0));
        let trace = h.get("x-b3-traceid").unwrap_or_default();
        assert_eq!(trace.len(), 32);
        assert!(parse_traceparent(&h.get("traceparent").unwrap_or_default()).is_some());
        assert_eq!(h.get("x-b3-parentspanid"), None);
        assert_eq!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .map(|p| p.sampled),
            Some(false)
        );
    }
}
