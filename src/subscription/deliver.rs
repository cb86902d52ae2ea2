//! Safe HTTP delivery for the rest-hook channel: checks an endpoint against the
//! server's rules (https unless `subscriptions.allow_http`; no loopback, private,
//! link-local or otherwise non-public address unless `subscriptions.allowed_hosts`
//! names it), parses `channel.header` entries, signs bodies, and POSTs a
//! notification connecting only to the addresses that passed the check, with a
//! timeout and without following redirects. The check runs at creation and again
//! at every delivery, after DNS resolution, so DNS rebinding cannot move a
//! subscription onto an internal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// The `subscriptions.*` settings that decide where notifications may go.
#[derive(Debug, Clone, Default)]
pub struct EndpointRules {
    pub allow_http: bool,
    pub allowed_hosts: Vec<String>,
}

/// Why an endpoint is refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("the endpoint is not an absolute http(s) URL: {0}")]
    NotAUrl(&'static str),
    #[error("the endpoint scheme `{0}` is not supported; use https")]
    UnsupportedScheme(String),
    #[error(
        "the endpoint for `{host}` uses plain http; use https, or turn on subscriptions.allow_http"
    )]
    HttpNotAllowed { host: String },
    #[error("the endpoint for `{host}` carries a user name or password in the URL, which is refused; send credentials with channel.header instead")]
    Userinfo { host: String },
    #[error("the endpoint host `{host}` does not resolve to any address")]
    DoesNotResolve {
        host: String,
        #[source]
        source: Option<std::io::Error>,
    },
    // The address is not shown: a client must not learn what a name resolves to
    // inside the network (the log of the refusal has it).
    #[error("the endpoint host `{host}` resolves to a {class} address; an operator may permit the host in subscriptions.allowed_hosts")]
    NonPublic {
        host: String,
        addr: IpAddr,
        class: &'static str,
    },
}

/// An endpoint that passed `check_endpoint`: the addresses are the only ones a
/// delivery may connect to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub scheme: String,
    /// Host as written in the URL, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    pub addrs: Vec<SocketAddr>,
}

/// Parses `url`, resolves its host and checks every address against `rules`.
pub fn check_endpoint(url: &str, rules: &EndpointRules) -> Result<Endpoint, EndpointError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| EndpointError::NotAUrl("it does not parse"))?;
    let scheme = uri
        .scheme_str()
        .ok_or(EndpointError::NotAUrl("it has no scheme"))?
        .to_ascii_lowercase();
    let authority = uri
        .authority()
        .ok_or(EndpointError::NotAUrl("it has no host"))?;
    let raw_host = authority.host();
    let literal_v6 = raw_host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host = literal_v6.unwrap_or(raw_host).to_string();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" if rules.allow_http => 80,
        "http" => return Err(EndpointError::HttpNotAllowed { host }),
        _ => return Err(EndpointError::UnsupportedScheme(scheme)),
    };
    if authority.as_str().contains('@') {
        return Err(EndpointError::Userinfo { host });
    }
    let port = match authority.as_str().rsplit_once(':') {
        Some((_, p)) if !p.ends_with(']') => {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(EndpointError::NotAUrl(
                    "its port is not a number from 1 to 65535",
                ))?
        }
        _ => default_port,
    };
    let ip = match literal_v6 {
        Some(h) => Some(IpAddr::V6(h.parse::<Ipv6Addr>().map_err(|_| {
            EndpointError::NotAUrl("its bracketed host is not an IPv6 address")
        })?)),
        None if host.is_empty() => return Err(EndpointError::NotAUrl("its host is empty")),
        None if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
        {
            return Err(EndpointError::NotAUrl(
                "its host has characters other than letters, digits, `.`, `-` and `_`",
            ))
        }
        // Only the canonical dotted quad parses here; odd forms such as `0x7f.1`
        // go to the resolver, and whatever it answers is checked below.
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    let addrs: Vec<SocketAddr> = match ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| EndpointError::DoesNotResolve {
                host: host.clone(),
                source: Some(e),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(EndpointError::DoesNotResolve { host, source: None });
    }
    let host_allowed = rules
        .allowed_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&host));
    for addr in &addrs {
        let Some(class) = classify(addr.ip()) else {
            continue;
        };
        if !host_allowed && !address_allowed(addr.ip(), &rules.allowed_hosts) {
            return Err(EndpointError::NonPublic {
                host,
                addr: addr.ip(),
                class,
            });
        }
    }
    Ok(Endpoint {
        scheme,
        host,
        port,
        addrs,
    })
}

/// Whether `allowed_hosts` names `ip` itself (`::1` and `[::1]` both do).
fn address_allowed(ip: IpAddr, allowed_hosts: &[String]) -> bool {
    allowed_hosts.iter().any(|h| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h.parse::<IpAddr>().is_ok_and(|a| a == ip)
    })
}

/// `None` for a public address, else what kind of non-public address it is.
fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    // Order matters: the broadcast address also lies in 240/4.
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([255, 255, 255, 255], 32, "broadcast"),
        ([0, 0, 0, 0], 8, "unspecified"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared (carrier-grade NAT)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "IETF protocol assignment"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    let bits = u32::from(ip);
    RANGES.iter().find_map(|(net, len, class)| {
        let mask = u32::MAX << (32 - len);
        (bits & mask == u32::from_be_bytes(*net)).then_some(*class)
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let embedded_v4 = || Ipv4Addr::from(bits as u32);
    match bits {
        0 => Some("unspecified"),
        1 => Some("loopback"),
        // IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96), NAT64 (64:ff9b::/96).
        _ if bits >> 32 == 0xffff || bits >> 32 == 0 || bits >> 32 == 0x0064_ff9b << 64 => {
            classify_v4(embedded_v4())
        }
        _ if bits >> 121 == 0xfc >> 1 => Some("unique local (private)"),
        _ if bits >> 118 == 0xfe80 >> 6 => Some("link-local"),
        _ if bits >> 118 == 0xfec0 >> 6 => Some("site-local"),
        _ if bits >> 120 == 0xff => Some("multicast"),
        _ if bits >> 96 == 0x2001_0db8 => Some("documentation"),
        _ => None,
    }
}

/// Header names the server sets itself; a subscription may not set them.
const SERVER_SET: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
];

/// Parses a Subscription `channel.header` entry, `Name: value`. Errors name the
/// header but never echo its value, which may be a secret.
pub fn parse_header(line: &str) -> Result<(String, String), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or("a channel.header entry must look like `Name: value`")?;
    let value = value.trim_matches([' ', '\t']);
    check_header(name, value)?;
    if name.len() >= 11 && name[..11].eq_ignore_ascii_case("x-fhirgate-") {
        return Err(format!(
            "channel.header `{name}` is refused: X-Fhirgate- headers are set by the server"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// The checks every outgoing header passes, the server's own included.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!(
            "channel.header name `{}` is not a valid HTTP header name",
            name.escape_debug()
        ));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "channel.header `{name}` has a control character (CR, LF, NUL or other) in its value"
        ));
    }
    if SERVER_SET.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "channel.header `{name}` is refused: the server sets it itself"
        ));
    }
    Ok(())
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One notification to POST.
pub struct Request<'a> {
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// `None` with an empty body is a ping (R4 "empty" payload): no body at all.
    pub content_type: Option<&'a str>,
    /// Bound on the whole delivery, name resolution included.
    pub timeout: Duration,
}

/// What became of one delivery. `detail` never carries the body or header values.
#[derive(Debug)]
pub enum Outcome {
    Delivered { status: u16 },
    Failed { status: Option<u16>, detail: String },
    Refused(EndpointError),
}

/// A resolver that answers only with the addresses `check_endpoint` passed.
#[derive(Debug)]
struct PinnedResolver {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl Resolver for PinnedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !host.eq_ignore_ascii_case(&self.host) {
            return Err(ureq::Error::HostNotFound);
        }
        let mut out = self.empty();
        // ureq keeps at most 16 addresses; `push` beyond that would panic.
        for addr in self.addrs.iter().take(16) {
            out.push(*addr);
        }
        Ok(out)
    }
}

/// Sends one subscription's notifications in turn, keeping the connection to its
/// endpoint alive between them (no new TCP or TLS handshake per event). Every
/// post checks the endpoint again (after DNS resolution); a connection only ever
/// goes to addresses that passed a check, and a changed host or answer makes a
/// new one.
pub struct Sender {
    rules: EndpointRules,
    /// The agent of the last post: its host, the addresses it may connect to.
    agent: Option<(String, Vec<SocketAddr>, ureq::Agent)>,
}

impl Sender {
    pub fn new(rules: &EndpointRules) -> Sender {
        Sender {
            rules: rules.clone(),
            agent: None,
        }
    }

    /// The agent for the addresses of `endpoint` (the one kept, when they are
    /// the same).
    fn agent(&mut self, endpoint: &Endpoint) -> ureq::Agent {
        // The same addresses in another order (round-robin DNS) are the same.
        let mut judged = endpoint.addrs.clone();
        judged.sort();
        if let Some((host, addrs, agent)) = &self.agent {
            if *host == endpoint.host && *addrs == judged {
                return agent.clone();
            }
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .https_only(!self.rules.allow_http)
            .proxy(None)
            .user_agent(concat!("fhirgate/", env!("CARGO_PKG_VERSION")))
            .build();
        let resolver = PinnedResolver {
            host: endpoint.host.clone(),
            addrs: endpoint.addrs.clone(),
        };
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
        self.agent = Some((endpoint.host.clone(), judged, agent.clone()));
        agent
    }

    /// One POST of `req` to the checked `endpoint`, within what is left of its
    /// timeout.
    fn send(
        &mut self,
        req: &Request,
        endpoint: &Endpoint,
        started: Instant,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let remaining = req.timeout.saturating_sub(started.elapsed());
        let agent = self.agent(endpoint);
        let mut builder = agent
            .post(req.url)
            .config()
            .timeout_global(Some(remaining))
            .build();
        for (name, value) in req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(content_type) = req.content_type {
            builder = builder.content_type(content_type);
        }
        if req.body.is_empty() && req.content_type.is_none() {
            builder.send_empty()
        } else {
            builder.send(req.body)
        }
    }

    /// Checks the endpoint again and POSTs the notification to it (blocking).
    pub fn post(&mut self, req: &Request) -> Outcome {
        let started = Instant::now();
        let endpoint = match check_with_timeout(req.url, &self.rules, req.timeout) {
            Ok(Ok(endpoint)) => endpoint,
            Ok(Err(refused)) => return Outcome::Refused(refused),
            Err(detail) => return failed(None, detail),
        };
        for (name, value) in req.headers {
            if let Err(e) = check_header(name, value) {
                return failed(None, e);
            }
        }
        // A kept connection the endpoint closed just as it was reused fails at
        // once; then one new connection is tried (a receiver drops duplicates by
        // event number, should the first have arrived after all).
        let reused = self.agent.is_some();
        let mut response = match self.send(req, &endpoint, started) {
            Ok(response) => response,
            Err(ureq::Error::Io(_) | ureq::Error::ConnectionFailed) if reused => {
                self.agent = None;
                match self.send(req, &endpoint, started) {
                    Ok(response) => response,
                    Err(e) => {
                        self.agent = None;
                        return failed(None, describe(&e));
                    }
                }
            }
            Err(e) => {
                self.agent = None;
                return failed(None, describe(&e));
            }
        };
        let status = response.status().as_u16();
        // Read (and drop) a short answer so the connection can carry the next
        // notification; a long one closes it.
        let _ = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec();
        tracing::debug!(host = %endpoint.host, port = endpoint.port, status, "rest-hook delivery");
        match status {
            200..=299 => Outcome::Delivered { status },
            300..=399 => {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none");
                let location: String = location.chars().take(200).collect();
                failed(
                    Some(status),
                    format!("redirects are not followed (Location: {location})"),
                )
            }
            _ => failed(Some(status), format!("the endpoint answered HTTP {status}")),
        }
    }
}

fn failed(status: Option<u16>, detail: String) -> Outcome {
    Outcome::Failed { status, detail }
}

/// `check_endpoint` bounded by `timeout`: the system resolver has none of its own.
/// A lookup that overruns is left to finish on its thread.
pub(crate) fn check_with_timeout(
    url: &str,
    rules: &EndpointRules,
    timeout: Duration,
) -> Result<Result<Endpoint, EndpointError>, String> {
    let (tx, rx) = mpsc::sync_channel(1);
    let (url, rules) = (url.to_string(), rules.clone());
    std::thread::spawn(move || tx.send(check_endpoint(&url, &rules)).ok());
    rx.recv_timeout(timeout)
        .map_err(|_| "resolving the endpoint host timed out".to_string())
}

/// A short account of a transport error, free of anything the request carried.
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(which) => format!("timed out ({which})"),
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::HostNotFound => "the host has no checked address".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::Http(_) => "a header name or value is not valid HTTP".to_string(),
        other => {
            let text = other.to_string();
            text.chars().take(200).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One post on a connection of its own.
    fn post(req: &Request, rules: &EndpointRules) -> Outcome {
        Sender::new(rules).post(req)
    }
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread::{self, JoinHandle};

    fn rules(allow_http: bool, allowed_hosts: &[&str]) -> EndpointRules {
        let allowed_hosts = allowed_hosts.iter().map(|h| h.to_string()).collect();
        EndpointRules {
            allow_http,
            allowed_hosts,
        }
    }

    #[test]
    fn classifies_every_range() {
        // `address: class` pairs; `-` is public.
        let cases =
            "0.1.2.3: unspecified; 10.20.30.40: private; 100.64.0.1: shared (carrier-grade NAT);
            100.127.255.254: shared (carrier-grade NAT); 100.128.0.1: -; 127.0.0.1: loopback;
            127.255.0.9: loopback; 169.254.169.254: link-local; 172.16.0.1: private;
            172.31.255.255: private; 172.32.0.1: -; 192.0.0.8: IETF protocol assignment;
            192.0.2.7: documentation; 192.168.1.1: private; 198.18.0.1: benchmarking;
            198.19.255.1: benchmarking; 198.20.0.1: -; 198.51.100.3: documentation;
            203.0.113.9: documentation; 224.0.0.251: multicast; 239.255.255.250: multicast;
            240.0.0.1: reserved; 255.255.255.255: broadcast; 8.8.8.8: -; 1.1.1.1: -;
            ::: unspecified; ::1: loopback; fc00::1: unique local (private);
            fd12:3456::1: unique local (private); fbff::1: -; fe80::1: link-local;
            febf::1: link-local; fec0::1: site-local; ff02::1: multicast;
            2001:db8::1: documentation; ::ffff:127.0.0.1: loopback; ::ffff:8.8.8.8: -;
            ::ffff:169.254.169.254: link-local; ::10.0.0.1: private; 64:ff9b::8.8.8.8: -;
            64:ff9b::192.168.0.1: private; 2606:4700::1: -; 2001:4860:4860::8888: -";
        for case in cases.split(';') {
            let (text, want) = case
                .trim()
                .rsplit_once(": ")
                .expect("case is `address: class`");
            let ip: IpAddr = text.parse().expect("test address parses");
            assert_eq!(classify(ip).unwrap_or("-"), want, "{text}");
        }
    }

    #[test]
    fn check_endpoint_refuses() {
        // (url, allow_http, the error accepted: a variant or an address class)
        let cases = [
            ("http://127.0.0.1:9/x", false, "HttpNotAllowed"),
            ("http://127.0.0.1:9/x", true, "loopback"),
            ("http://169.254.169.254/latest", true, "link-local"),
            ("https://169.254.169.254/latest", false, "link-local"),
            ("http://[::1]:8080/", true, "loopback"),
            ("https://[::ffff:10.0.0.1]/", false, "private"),
            ("http://localhost:1/", true, "loopback"),
            // Whatever the resolver makes of it, it must not pass.
            ("http://0x7f.1/", true, "loopback|DoesNotResolve"),
            ("https://user:pw@example.org/", false, "Userinfo"),
            ("ftp://x/", false, "UnsupportedScheme(\"ftp\")"),
            ("example.org/hook", false, "NotAUrl"),
            ("https://exa%6dple.org/", false, "NotAUrl"),
            ("https://example.org:0/", false, "NotAUrl"),
            ("https://[not-v6]/", false, "NotAUrl"),
            ("https://host.invalid/", false, "DoesNotResolve"),
        ];
        for (url, allow_http, want) in cases {
            let got = match check_endpoint(url, &rules(allow_http, &[])) {
                Ok(endpoint) => panic!("{url} passed: {endpoint:?}"),
                Err(EndpointError::NonPublic { class, .. }) => class.to_string(),
                Err(e) => format!("{e:?}"),
            };
            let ok = want.split('|').any(|w| got.starts_with(w));
            assert!(ok, "{url}: {got}");
        }
        // Messages say which setting to change and what the address is.
        let text = |url, rules| {
            check_endpoint(url, &rules)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let strict = text("http://[::1]:8080/", rules(false, &[]));
        assert!(strict.contains("subscriptions.allow_http"), "{strict}");
        let loopback = text("http://[::1]:8080/", rules(true, &[]));
        assert!(
            loopback.contains("subscriptions.allowed_hosts"),
            "{loopback}"
        );
        assert!(loopback.contains("a loopback address"), "{loopback}");
    }

    #[test]
    fn allowed_hosts_permit_exact_matches() {
        // (url, allowed_hosts entry, passes)
        let cases = [
            ("http://127.0.0.1:8080/hook", "127.0.0.1", true),
            ("http://[::1]:8080/", "::1", true),
            ("http://[::1]:8080/", "[::1]", true),
            ("http://LOCALHOST:8080/", "localhost", true),
            ("http://127.0.0.1:8080/", "127.0.0.2", false),
            ("http://127.0.0.1:8080/", "localhost", false),
        ];
        for (url, allowed, passes) in cases {
            let got = check_endpoint(url, &rules(true, &[allowed]));
            assert_eq!(got.is_ok(), passes, "{url} with {allowed}: {got:?}");
            assert!(got.is_ok_and(|e| e.port == 8080 && !e.addrs.is_empty()) || !passes);
        }
        let e = check_endpoint("https://[2606:4700::1]/x", &rules(false, &[]))
            .expect("a public literal passes");
        let got = (e.scheme.as_str(), e.host.as_str(), e.port);
        assert_eq!(got, ("https", "2606:4700::1", 443));
    }

    #[test]
    fn parses_channel_headers() {
        let ok = [
            ("Authorization: Bearer abc", "Authorization", "Bearer abc"),
            ("X-Api-Key:k1  ", "X-Api-Key", "k1"),
            ("X-Colon: a:b", "X-Colon", "a:b"),
        ];
        for (line, name, value) in ok {
            assert_eq!(
                parse_header(line),
                Ok((name.to_string(), value.to_string()))
            );
        }
        let refused = "no colon here|: value|Bad Name: v|Bad\u{e9}: v|X-Ok: a\r\nX-Injected: b|\
            X-Ok: a\nb|X-Ok: a\0b|Host: evil.example|content-length: 5|Content-Type: text/plain|\
            Transfer-Encoding: chunked|connection: close|X-Fhirgate-Signature: sha256=00|\
            x-fhirgate-anything: v";
        for line in refused.split('|') {
            let err = parse_header(line).map(|_| ()).unwrap_err();
            assert!(!err.contains("evil") && !err.contains("sha256=00"), "{err}");
        }
    }

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Reads one HTTP/1.1 request (head and Content-Length body) as text.
    fn read_request(stream: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                let length = head.split("\r\ncontent-length: ").nth(1).map_or(0, |rest| {
                    rest.lines()
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                });
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return text,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A loopback server answering every request with `response`; it keeps
    /// listening for 300 ms after the first one, then returns all it saw.
    fn serve(response: String) -> (String, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let handle = thread::spawn(move || {
            let (started, mut last, mut seen) = (Instant::now(), None::<Instant>, Vec::new());
            while started.elapsed() < Duration::from_secs(10)
                && last.is_none_or(|t| t.elapsed() < Duration::from_millis(300))
            {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).expect("blocking");
                        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                        seen.push(read_request(&mut stream));
                        stream.write_all(response.as_bytes()).ok();
                        last = Some(Instant::now());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            seen
        });
        (url, handle)
    }

    const FHIR_JSON: Option<&str> = Some("application/fhir+json");

    fn request<'a>(url: &'a str, headers: &'a [(String, String)], body: &'a [u8]) -> Request<'a> {
        let (content_type, timeout) = (FHIR_JSON, Duration::from_secs(5));
        Request {
            url,
            headers,
            body,
            content_type,
            timeout,
        }
    }

    fn loopback_rules() -> EndpointRules {
        rules(true, &["127.0.0.1"])
    }

    #[test]
    fn delivers_body_content_type_and_headers() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let headers = vec![("X-Api-Key".to_string(), "k-123".to_string())];
        let bundle: &[u8] = br#"{"resourceType":"Bundle"}"#;
        for (body, content_type) in [(bundle, FHIR_JSON), (b"".as_slice(), None)] {
            let (url, server) = serve(ok.to_string());
            let req = Request {
                content_type,
                ..request(&url, &headers, body)
            };
            let outcome = post(&req, &loopback_rules());
            assert!(
                matches!(outcome, Outcome::Delivered { status: 200 }),
                "{outcome:?}"
            );
            let seen = server.join().expect("server thread");
            assert_eq!(seen.len(), 1);
            let lower = seen[0].to_ascii_lowercase();
            assert!(lower.starts_with("post /hook http/1.1\r\n"), "{lower}");
            assert!(lower.contains("\r\nx-api-key: k-123\r\n"), "{lower}");
            let ct = content_type.map(|ct| format!("\r\ncontent-type: {ct}\r\n"));
            assert_eq!(lower.contains("content-type:"), ct.is_some(), "{lower}");
            assert!(ct.is_none_or(|ct| lower.contains(&ct)), "{lower}");
            let body = String::from_utf8_lossy(body);
            assert!(seen[0].ends_with(&format!("\r\n\r\n{body}")), "{}", seen[0]);
        }
    }

    #[test]
    fn other_statuses_fail_and_redirects_are_not_followed() {
        // (status line and headers, expected status, expected words in the detail);
        // `/again` points back at the same server, so following it would show.
        let cases = [
            (
                "302 Found\r\nLocation: http://169.254.169.254/",
                302,
                "not followed (Location: http://169.254.169.254/)",
            ),
            (
                "307 Temporary Redirect\r\nLocation: /again",
                307,
                "not followed (Location: /again)",
            ),
            ("500 Oops", 500, "HTTP 500"),
            ("404 Not Found", 404, "HTTP 404"),
        ];
        let headers = vec![("Authorization".to_string(), "Bearer s3cret".to_string())];
        for (head, want_status, want_detail) in cases {
            let response = format!("HTTP/1.1 {head}\r\nContent-Length: 4\r\n\r\nboom");
            let (url, server) = serve(response);
            match post(&request(&url, &headers, b"secret-phi"), &loopback_rules()) {
                Outcome::Failed { status, detail } => {
                    assert_eq!(status, Some(want_status), "{head}");
                    assert!(detail.contains(want_detail), "{head}: {detail}");
                    assert!(!detail.contains("secret-phi") && !detail.contains("s3cret"));
                }
                other => panic!("{head}: {other:?}"),
            }
            assert_eq!(server.join().expect("server thread").len(), 1, "{head}");
        }
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        // Holds the connection open, never answering; reports whether the client
        // hung up first (true) or the server's 10 s guard ran out (false).
        let server = thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return false;
            };
            stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut sink = [0u8; 1024];
            loop {
                match stream.read(&mut sink) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(e) => return e.kind() == ErrorKind::ConnectionReset,
                }
            }
        });
        let timeout = Duration::from_millis(500);
        let outcome = post(
            &Request {
                timeout,
                ..request(&url, &[], b"{}")
            },
            &loopback_rules(),
        );
        assert!(
            matches!(outcome, Outcome::Failed { status: None, .. }),
            "{outcome:?}"
        );
        assert!(
            server.join().expect("server thread"),
            "the client never hung up"
        );
    }

    #[test]
    fn refused_endpoints_are_never_contacted() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let outcome = post(&request(&url, &[], b"{}"), &rules(true, &[]));
        assert!(
            matches!(outcome, Outcome::Refused(EndpointError::NonPublic { .. })),
            "{outcome:?}"
        );
        // A header the server sets itself is refused before any connection too.
        let host = vec![("Host".to_string(), "evil.example".to_string())];
        let outcome = post(&request(&url, &host, b"{}"), &loopback_rules());
        assert!(
            matches!(outcome, Outcome::Failed { status: None, .. }),
            "{outcome:?}"
        );
        let accepted = listener.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "{accepted:?}"
        );
    }
}
