//! A blocking HTTP/1.1 client (over `ureq`) for everything native that talks to Envoy or to our
//! servers: admin requests, test requests, the demo's traffic. One fresh connection per request
//! (no pool; [`get_repeatedly`] alone keeps one connection for its requests), only the headers
//! the caller gives (no `user-agent` or `accept` of its own), and
//! every status is an answer, not an error.

use std::sync::OnceLock;
use std::time::Duration;

use ureq::http::{self, Method};
use ureq::Agent;

/// A response received by [`http_get`], [`http_request`] or [`request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// Header fields in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, decoded as UTF-8 (lossily).
    pub body: String,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// The first value of header `name` (case-insensitive) in a lowercase-named header list.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| new_agent(0, None))
}

/// An agent of this client: every status an answer, no redirects, no headers of its own, up to
/// `idle` connections kept between requests, and `timeout` for each whole request if given.
fn new_agent(idle: usize, timeout: Option<Duration>) -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(idle)
        .max_idle_connections_per_host(idle)
        .max_redirects(0)
        .user_agent("")
        .accept("")
        .allow_non_standard_methods(true)
        .timeout_global(timeout)
        .build()
        .into()
}

/// Sends `GET path` to `127.0.0.1:port` with extra `headers` and returns the response.
///
/// Times out after the harness patience ([`crate::patience`]).
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    http_request("GET", port, path, headers, b"")
}

/// Sends one request to `127.0.0.1:port` on a fresh connection. A non-empty `body` is sent with
/// a `content-length`. Times out after the harness patience ([`crate::patience`]).
pub fn http_request(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    request(method, port, path, headers, body, crate::patience())
}

/// Sends one request to `127.0.0.1:port` and reads the whole response within `timeout`.
/// A `host` header in `headers` replaces the default `127.0.0.1:<port>`.
pub fn request(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let what = || format!("{method} 127.0.0.1:{port}{path}");
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("{}: {e}", what()))?;
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if !body.is_empty() && matches!(method, Method::GET | Method::HEAD) {
        return Err(format!(
            "{}: this client sends no body with GET or HEAD",
            what()
        ));
    }
    let req = builder
        .body(body.to_vec())
        .map_err(|e| format!("{}: {e}", what()))?;
    let call = agent()
        .configure_request(req)
        .timeout_global(Some(timeout))
        .build();
    let mut resp = agent().run(call).map_err(|e| format!("{}: {e}", what()))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| format!("{}: reading the body: {e}", what()))?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Sends `GET path` to `127.0.0.1:port` `n` times, one after another over one kept-alive
/// connection (HTTP/1.1, opened again only if the server closes it), with extra `headers`;
/// returns how many answers had status 200. Each response's body is read whole before the next
/// request. For counting what a fixed number of requests costs a server, as a load generator's
/// long-lived connections would present them.
pub fn get_repeatedly(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    n: u32,
) -> Result<u32, String> {
    let agent = new_agent(1, Some(crate::patience()));
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut ok = 0;
    for i in 0..n {
        let mut req = agent.get(&url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut resp = req
            .call()
            .map_err(|e| format!("GET {url} (request {} of {n}): {e}", i + 1))?;
        resp.body_mut()
            .read_to_vec()
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        if resp.status().as_u16() == 200 {
            ok += 1;
        }
    }
    Ok(ok)
}
