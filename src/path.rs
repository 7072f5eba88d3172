//! One reading of the request path, shared by routing, auth and the
//! backend. Before anything looks at a path it is normalised (RFC 3986
//! §6.2.2): absolute-form reduced to its path, percent-encoded unreserved
//! characters decoded and the other escapes upper-cased, dot segments
//! removed, repeated slashes merged. Native-route matching, the route table
//! and `auth.protect_passthrough` see the normalised path, and the backend
//! receives it, so no spelling of `/eai-gateway/chat` can reach a backend
//! that would decode it back (`/%65ai-gateway/chat`, `//eai-gateway/chat`,
//! `/x/../eai-gateway/chat`, `/eai-gateway%2Fchat`).
//!
//! Encoded separators (`%2F`, `%5C`, `\`) are refused by default: whether
//! they split segments is up to each backend, so no reading of them is safe.
//! A path that only a lenient server would take for a native route (other
//! letter case, `;` parameters, repeated slashes when merging is off) is
//! refused too, rather than forwarded.

use std::borrow::Cow;

use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::routes::is_native_path;
use crate::settings::{EncodedSeparators, PathSettings};

/// A normalised request target: an origin-form path and the query as sent,
/// in one string (one allocation per request, and the origin form to send
/// upstream without building it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The path, then `?` and the query when there is one.
    origin: String,
    path_len: usize,
    /// Whether normalising changed the target: only then must the backend
    /// be sent another one.
    pub changed: bool,
}

impl Target {
    fn new(path: &str, query: Option<&str>, changed: bool) -> Self {
        let mut origin = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
        origin.push_str(path);
        if let Some(q) = query {
            origin.push('?');
            origin.push_str(q);
        }
        Self {
            origin,
            path_len: path.len(),
            changed,
        }
    }

    pub fn path(&self) -> &str {
        &self.origin[..self.path_len]
    }

    pub fn query(&self) -> Option<&str> {
        self.origin.get(self.path_len + 1..)
    }

    /// The origin-form target to send upstream.
    pub fn origin_form(&self) -> &str {
        &self.origin
    }
}

/// The one native route with a parameter in its path.
const AGENT_ROUTE: &str = "/eai-gateway/agent/";

fn bad(detail: &'static str) -> GatewayError {
    GatewayError::new(ErrorKind::MalformedRequest, detail)
}

/// Normalises a raw request target (the bytes of the request line).
pub fn normalize(raw: &[u8], rules: &PathSettings) -> GatewayResult<Target> {
    if raw == b"*" {
        // OPTIONS * names the server, not a path: nothing to route by.
        return Ok(Target::new("*", None, false));
    }
    let (path, query) = split_target(raw)?;
    // Validated whole first: the lossy reading walks the query in pieces.
    let query = query
        .map(|q| std::str::from_utf8(q).map_or_else(|_| String::from_utf8_lossy(q), Cow::Borrowed));
    // Most paths are already canonical (no escape, no dot or empty
    // segment) and name no native route in any spelling: nothing to build.
    let plain = plain(path);
    if let Some(plain) = plain
        && !could_be_native(plain)
    {
        let changed = plain.len() + query.as_ref().map_or(0, |q| q.len() + 1) != raw.len();
        return Ok(Target::new(plain, query.as_deref(), changed));
    }
    let path = match plain {
        Some(plain) => plain.to_owned(),
        None => {
            let decoded = decode_unreserved(path, rules.encoded_separators)?;
            remove_dot_segments(&decoded, rules.merge_slashes)
        }
    };
    let path = canonical_native(path)?;
    let changed = raw.first() != Some(&b'/')
        || raw.get(..path.len()) != Some(path.as_bytes())
        || raw.len() != path.len() + query.as_ref().map_or(0, |q| q.len() + 1);
    Ok(Target::new(&path, query.as_deref(), changed))
}

/// `path` as text when normalising would not change it.
fn plain(path: &[u8]) -> Option<&str> {
    // `is_plain` admits printable ASCII only, so the text is valid UTF-8.
    is_plain(path).then(|| std::str::from_utf8(path).ok())?
}

/// Whether the gateway answers this raw target itself: a native route, or
/// a target it refuses. The same as `is_native_path` of what `normalize`
/// gives (a refusal counting as native), without its allocations for the
/// usual case, a plain path that no spelling makes a route. The settings
/// are asked for only when the target is not that one.
pub fn is_native_target(raw: &[u8], rules: impl FnOnce() -> PathSettings) -> bool {
    !plainly_proxied(raw) && normalize(raw, &rules()).map_or(true, |t| is_native_path(t.path()))
}

/// A target whose path normalising would not change and that no spelling
/// makes a native route: the usual one, known without the path settings.
fn plainly_proxied(raw: &[u8]) -> bool {
    split_target(raw)
        .ok()
        .and_then(|(path, _)| plain(path))
        .is_some_and(|plain| !could_be_native(plain))
}

/// What each byte is to `is_plain` and `could_be_native`, looked up instead
/// of compared: both run twice on every proxied request.
const PLAIN: u8 = 1;
/// `/`: a segment starts after it.
const SLASH: u8 = 2;
/// Where a native name could start (`e`, `h`, `r` in either case) or be
/// escaped (`%`).
const NAME: u8 = 4;
static BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        table[b] = match b as u8 {
            b'%' => NAME,
            b'\\' | b';' => 0,
            b'/' => PLAIN | SLASH,
            b'e' | b'E' | b'h' | b'H' | b'r' | b'R' => PLAIN | NAME,
            _ => PLAIN,
        };
        b += 1;
    }
    table
};

/// A path normalising would not change: printable ASCII without escapes,
/// backslashes or parameters, and no empty or dot segment.
fn is_plain(bytes: &[u8]) -> bool {
    if bytes.first() != Some(&b'/') {
        return false;
    }
    bytes.iter().enumerate().all(|(i, &b)| {
        let class = BYTES[usize::from(b)];
        // After a slash: not another one, nor a dot segment. The last
        // segment may be empty (`/a/`).
        class & PLAIN != 0
            && (class & SLASH == 0
                || !matches!(
                    &bytes[i + 1..],
                    [b'/', ..] | [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
                ))
    })
}

/// The path (origin-form, possibly empty for a URL without one) and query
/// of an origin-form or absolute-form target.
fn split_target(raw: &[u8]) -> GatewayResult<(&[u8], Option<&[u8]>)> {
    // A fragment is never part of a request target.
    let raw = match memchr::memchr(b'#', raw) {
        Some(i) => &raw[..i],
        None => raw,
    };
    let origin = if raw.first() == Some(&b'/') {
        raw
    } else {
        let scheme_len = if starts_with_ignore_case(raw, b"http://") {
            7
        } else if starts_with_ignore_case(raw, b"https://") {
            8
        } else {
            return Err(bad("the request target must be a path or an http(s) URL"));
        };
        // The authority ends at the first '/' or '?'; the path follows.
        let rest = &raw[scheme_len..];
        let end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        &rest[end..]
    };
    Ok(match memchr::memchr(b'?', origin) {
        Some(i) => (&origin[..i], Some(&origin[i + 1..])),
        None => (origin, None),
    })
}

fn starts_with_ignore_case(raw: &[u8], prefix: &[u8]) -> bool {
    raw.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// Decodes escapes of unreserved characters, upper-cases the others and
/// escapes raw bytes outside ASCII; refuses NUL and, unless kept, encoded
/// separators.
fn decode_unreserved(path: &[u8], separators: EncodedSeparators) -> GatewayResult<String> {
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(bad("the path has a malformed percent-escape"));
            };
            let decoded = hi << 4 | lo;
            match decoded {
                0 => return Err(bad("the path contains an encoded NUL")),
                b'/' | b'\\' if separators == EncodedSeparators::Reject => {
                    return Err(bad(
                        "the path contains an encoded slash or backslash (%2F, %5C)",
                    ));
                }
                d if is_unreserved(d) => out.push(char::from(d)),
                d => push_escaped(&mut out, d),
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' if separators == EncodedSeparators::Reject => {
                return Err(bad("the path contains a backslash"));
            }
            b'\\' => push_escaped(&mut out, b),
            0x21..=0x7e => out.push(char::from(b)),
            // Raw bytes outside printable ASCII: escaped, as a URI has them.
            _ => push_escaped(&mut out, b),
        }
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on whole segments, optionally merging empty ones. The
/// result starts with '/'.
fn remove_dot_segments(path: &str, merge_slashes: bool) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            "" if merge_slashes => trailing_slash = i == last,
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normalised = String::with_capacity(path.len());
    for seg in &out {
        normalised.push('/');
        normalised.push_str(seg);
    }
    if trailing_slash || normalised.is_empty() {
        normalised.push('/');
    }
    normalised
}

/// Native paths must be exactly canonical: one trailing slash is dropped
/// (`/eai-gateway/chat/` is the chat route); a path that only a lenient
/// server would take for a native one (any letter case, `;` parameters
/// stripped, as Tomcat does even in `..;`, slashes merged) is refused
/// instead of forwarded.
fn canonical_native(path: String) -> GatewayResult<String> {
    let trimmed = match path.strip_suffix('/') {
        Some(t) if !t.is_empty() && is_native_path(t) => t.to_owned(),
        _ => path,
    };
    if is_native_path(&trimmed) {
        if trimmed.contains(';') {
            return Err(bad("the gateway's routes take no path parameters (';')"));
        }
        // Route names are lower case; only a user number may be otherwise.
        let route = match trimmed.strip_prefix(AGENT_ROUTE) {
            Some(_) => AGENT_ROUTE,
            None => trimmed.as_str(),
        };
        if route.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(
                "the path is a variant of a gateway route; use its exact spelling",
            ));
        }
        let decoded = percent_encoding::percent_decode_str(&trimmed);
        if decoded.decode_utf8().is_err() {
            return Err(bad("the path is not valid UTF-8 once decoded"));
        }
        return Ok(trimmed);
    }
    if could_be_native(&trimmed) && is_native_path(&lenient(&trimmed)) {
        return Err(bad(
            "the path is a variant of a gateway route; use its exact spelling",
        ));
    }
    Ok(trimmed)
}

/// Cheap pre-check for `lenient`: only a path naming a native route in
/// some letter case (or escape) can be read as one.
fn could_be_native(path: &str) -> bool {
    let path = path.as_bytes();
    path.iter().enumerate().any(|(i, &b)| {
        if BYTES[usize::from(b)] & NAME == 0 {
            return false;
        }
        let name: &[u8] = match b.to_ascii_lowercase() {
            b'e' => b"eai-gateway",
            b'h' => b"healthz",
            b'r' => b"readyz",
            _ => return true,
        };
        path.get(i..i + name.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(name))
    })
}

/// The path as the most lenient server would read it: fully decoded,
/// backslashes as slashes, parameters dropped from every segment, empty and
/// dot segments resolved, lower case.
fn lenient(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .replace('\\', "/");
    let mut stripped = String::with_capacity(decoded.len());
    for seg in decoded.split('/') {
        stripped.push('/');
        stripped.push_str(seg.split(';').next().unwrap_or_default());
    }
    let mut out = remove_dot_segments(&stripped, true);
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out.to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
