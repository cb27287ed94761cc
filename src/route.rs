//! The routing table of a frontend that serves many services on one port (nginx `server_name` +
//! `location`, Traefik `Host()` + `PathPrefix()`, Envoy virtual hosts): which backend a request
//! goes to by its host and path, or a TLS connection by its SNI, and the path it is forwarded
//! with. It owns the host matchers ([`HostMatch`]), the precedence between routes ([`Table`]),
//! the path normal form routes match on ([`normalize_path`]) and `strip_prefix`. A pure leaf: it
//! imports nothing from the crate; config validation, the snapshot and the data planes call it.
//!
//! Precedence, among the routes whose host and path both match: an exact host beats a wildcard,
//! a longer wildcard suffix beats a shorter one, any wildcard beats a route without a host;
//! between equally specific hosts the longest `path_prefix` wins; the order in the file breaks
//! exact ties. Nothing matches: the frontend's own backend (the fallback), if it has one.
//!
//! Paths are matched, and forwarded, in one normal form (see [`normalize_path`]); a path whose
//! encoded slashes, backslashes or `;` parameters would take another route if the upstream read
//! them as separators is refused ([`BadPath::Ambiguous`]), so no request is routed on one reading
//! of its path and served on another.
//!
//! A route may split its requests between backends by weight (a canary): the schedule is
//! `split`'s, the only module of the crate this one imports (itself a pure leaf).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::split::Split;

/// `path_prefix` when a route leaves it out: every path.
pub const DEFAULT_PATH_PREFIX: &str = "/";
/// `strip_prefix` when a route leaves it out: the upstream sees the whole path.
pub const DEFAULT_STRIP_PREFIX: bool = false;
/// The longest host name a route may name (RFC 1035 2.3.4, without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;
/// The longest label of a host name (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// The request target of `OPTIONS *` (RFC 9112 3.2.4): routed by its host alone.
pub const ASTERISK: &str = "*";

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Which hosts a route (its `host`) or an SNI route (its `sni`) serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// No `host`: any host, and requests without one.
    Any,
    /// `api.example.com`: that host only, held lower-case without a trailing dot. An IPv6
    /// literal is written, and matched, in brackets: `[::1]` (textually: `[0::1]` is another).
    Exact(String),
    /// `*.example.com`, held as its suffix `example.com`: hosts of one or more labels followed
    /// by `.example.com` (`a.example.com`, `a.b.example.com`), not `example.com` itself.
    Wildcard(String),
}

impl HostMatch {
    /// Reads a route's `host` (or `sni`): absent is [`HostMatch::Any`], `*.example.com` a
    /// wildcard, anything else an exact name or a bracketed IPv6 literal. Lower-cases it and
    /// drops one trailing dot. The error names what is wrong: empty, a port, `*` other than as
    /// the whole first label, an IPv6 address without brackets, an empty or overlong label, a
    /// character other than a letter, digit, `-` or `_`.
    pub fn parse(host: Option<&str>) -> Result<HostMatch, String> {
        let Some(raw) = host else {
            return Ok(HostMatch::Any);
        };
        let bad = |why: &str| Err(format!("{raw:?}: {why}"));
        if raw.is_empty() {
            return bad("empty (leave it out to match any host)");
        }
        let name = raw.strip_suffix('.').unwrap_or(raw);
        if let Some(inner) = name.strip_prefix('[') {
            let Some((literal, after)) = inner.split_once(']') else {
                return bad("an IPv6 literal without its closing `]`");
            };
            if after.starts_with(':') {
                return bad("a port (routes match any port: write the host alone)");
            }
            let ok = literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !after.is_empty() || !literal.contains(':') || !ok {
                return bad("not an IPv6 literal such as `[::1]`");
            }
            return Ok(HostMatch::Exact(name.to_ascii_lowercase()));
        }
        match name.bytes().filter(|&b| b == b':').count() {
            0 => {}
            1 => return bad("a port (routes match any port: write the host alone)"),
            _ => return bad("an IPv6 address goes in brackets, as in `[::1]`"),
        }
        if name == "*" {
            return bad(
                "`*` alone (a wildcard needs a domain: `*.example.com`; leave the host out to match any host)",
            );
        }
        let (wild, domain) = match name.strip_prefix("*.") {
            Some(d) => (true, d),
            None => (false, name),
        };
        if let Err(why) = check_name(domain) {
            return bad(&why);
        }
        let domain = domain.to_ascii_lowercase();
        Ok(if wild {
            HostMatch::Wildcard(domain)
        } else {
            HostMatch::Exact(domain)
        })
    }

    /// Whether a request's host matches: `host` as received in Host, `:authority` or the SNI (a
    /// `:port`, one trailing dot and upper case are ignored).
    pub fn matches(&self, host: &str) -> bool {
        let key = host_key(host);
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => *key == **h,
            HostMatch::Wildcard(suffix) => key
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty()),
        }
    }
}

/// As written in the file: `api.example.com`, `*.example.com`; `*` for [`HostMatch::Any`].
impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// For the admin API: the host as written in the file, `null` for [`HostMatch::Any`].
impl serde::Serialize for HostMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HostMatch::Any => s.serialize_none(),
            m => s.collect_str(m),
        }
    }
}

/// A domain name of letters, digits, `-` and `_` in non-empty labels (`*` is refused here: a
/// wildcard's `*.` was taken off before).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > MAX_HOST_LEN {
        return Err(format!("longer than {MAX_HOST_LEN} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label {label:?} longer than {MAX_LABEL_LEN} characters"
            ));
        }
    }
    match name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
    {
        None => Ok(()),
        Some('*') => Err("`*` must be the whole first label, as in `*.example.com`".into()),
        Some(c) if !c.is_ascii() => Err(format!(
            "bad character {c:?} (write an internationalized name in its `xn--` form)"
        )),
        Some(c) => Err(format!("bad character {c:?}")),
    }
}

/// The part of a Host, `:authority` or SNI value that routes compare: without a `:port` (an
/// IPv6 literal keeps its brackets), without one trailing dot, lower-case. Borrowed unless the
/// value has upper case in it.
fn host_key(raw: &str) -> Cow<'_, str> {
    // One pass for the usual name: where a `:port` starts, and whether there is upper case.
    let (name, upper) = if raw.starts_with('[') {
        let name = raw.find(']').map_or(raw, |end| &raw[..=end]);
        (name, name.bytes().any(|b| b.is_ascii_uppercase()))
    } else {
        let mut end = raw.len();
        let mut upper = false;
        for (i, b) in raw.bytes().enumerate() {
            if b == b':' {
                end = i;
                break;
            }
            upper |= b.is_ascii_uppercase();
        }
        (&raw[..end], upper)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Where a route comes from, for the admin listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A `[[frontend.route]]` in the config file.
    Config,
    /// A route published in etcd.
    Etcd,
}

/// One route. An HTTP route has `sni: None` and matches on `host` and `path_prefix`; an SNI
/// route (a TCP frontend's TLS passthrough) has `sni` set and is used by [`Table::pick_sni`]
/// only (its `host`, `path_prefix` and `strip_prefix` are then ignored: config validation
/// refuses the mix).
///
/// `P` is what the data plane attaches to each route and only carries: its traffic policy
/// (the snapshot's routes carry `config::Policy`; this module never looks inside it).
#[derive(Debug, Clone, PartialEq)]
pub struct Route<P = ()> {
    /// The hosts it serves.
    pub host: HostMatch,
    /// A plain string prefix of the normalized path ([`normalize_path`]), starting with `/`;
    /// [`DEFAULT_PATH_PREFIX`] when left out. Checked by [`parse_path_prefix`].
    pub path_prefix: String,
    /// The upstream sees the path without `path_prefix` ([`strip_prefix`]).
    pub strip_prefix: bool,
    /// `Some`: an SNI route, matched on the TLS ClientHello's server name.
    pub sni: Option<HostMatch>,
    /// The index of its backend in the snapshot's backends.
    pub backend: usize,
    /// Its backend's name, for logs and the admin listing.
    pub backend_name: Arc<str>,
    /// `Some`: each request goes to one of these backends, by weight (`backend` is then the
    /// heaviest, for listings that name one); `None`: every request goes to `backend`.
    pub split: Option<Arc<Split>>,
    /// Where it comes from.
    pub source: Source,
    /// What the data plane does with its requests besides forwarding them (its policy).
    pub policy: P,
}

impl<P> Route<P> {
    /// Whether it is an SNI route (matched by [`Table::pick_sni`], not by host and path).
    pub fn is_sni(&self) -> bool {
        self.sni.is_some()
    }
}

/// Reads a route's `path_prefix`: absent is [`DEFAULT_PATH_PREFIX`]. It must start with `/`, be
/// in the normal form requests are matched in (else no request could match it: the error names
/// the form to write), and hold no `?`, `#`, `;`, backslash, encoded slash or encoded
/// backslash (a request path with those is refused when reading them as separators changes its
/// route, which would refuse every request under such a prefix).
pub fn parse_path_prefix(prefix: Option<&str>) -> Result<String, String> {
    let Some(p) = prefix else {
        return Ok(DEFAULT_PATH_PREFIX.to_string());
    };
    if !p.starts_with('/') {
        return Err(format!("{p:?}: must start with '/'"));
    }
    if has_separator_lookalike(p) {
        return Err(format!(
            "{p:?}: a ';', a backslash, %2F or %5C (requests are refused when reading those as separators changes their route)"
        ));
    }
    match normalize_path(p) {
        Err(e) => Err(format!("{p:?}: {e}")),
        Ok(n) if n != p => Err(format!(
            "{p:?}: requests are matched in normal form; write {n:?}"
        )),
        Ok(_) => Ok(p.to_string()),
    }
}

/// Why a request path is refused (the data plane answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// Not `/...` (nor `*` where [`Table::route`] takes it).
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("a '%' not followed by two hex digits")]
    BadEscape,
    /// A `?` or `#`: the query is not part of the path (callers split it off).
    #[error("a '?' or '#' in the path")]
    QueryOrFragment,
    /// Reading its `%2F`, `%5C`, backslashes and `;` parameters as an upstream might (as
    /// separators) picks another route than reading them as data.
    #[error("an encoded slash, a backslash or a ';' parameter changes the route")]
    Ambiguous,
}

/// The normal form of a request path, which routes match and the upstream is sent. Takes the
/// path alone, without the query (a `?` or `#` is refused: callers split the query off and put
/// it back unchanged). It must start with `/` (`*` of `OPTIONS *` too is refused here; see
/// [`Table::route`]).
///
/// - percent-encoded unreserved characters (RFC 3986 2.3: letters, digits, `-._~`) are decoded
///   (`/%61dmin` is `/admin`, `%2e%2e` is `..`); other escapes stay, their hex upper-cased
///   (`%c3%a9` -> `%C3%A9`); a `%` without two hex digits is [`BadPath::BadEscape`];
/// - repeated slashes are merged (nginx's `merge_slashes`), then the dot segments removed (RFC
///   3986 5.2.4, never above the root): `/./a//b/` -> `/a/b/`, `/a/b/..` -> `/a/`, `/..` -> `/`;
/// - `%2F`, `%5C`, backslashes and `;` are data here (`/a/%2Fb` stays); whether they may change
///   the route is [`Table::route`]'s question.
///
/// Borrowed when the path is already in normal form (the common case: no allocation).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    if is_normal(path)? {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(rebuild(path)))
    }
}

/// Checks a path starting with `/` for `?`, `#` and bad escapes, and says whether it is already
/// in normal form: no encoded unreserved character, no lower-case hex, no empty segment but the
/// last, no `.` or `..` segment.
fn is_normal(path: &str) -> Result<bool, BadPath> {
    let b = path.as_bytes();
    let mut normal = true;
    let mut seg_start = 1;
    let mut i = 1;
    while i <= b.len() {
        if i == b.len() || b[i] == b'/' {
            let seg = &b[seg_start..i];
            if (seg.is_empty() && i < b.len()) || seg == b"." || seg == b".." {
                normal = false;
            }
            seg_start = i + 1;
            i += 1;
            continue;
        }
        match b[i] {
            b'?' | b'#' => return Err(BadPath::QueryOrFragment),
            b'%' => {
                let (hi, lo) = (b.get(i + 1).copied(), b.get(i + 2).copied());
                let v = escape_value(hi, lo).ok_or(BadPath::BadEscape)?;
                if is_unreserved(v) || hi.is_some_and(|h| h.is_ascii_lowercase()) {
                    normal = false;
                }
                if lo.is_some_and(|l| l.is_ascii_lowercase()) {
                    normal = false;
                }
                i += 3;
            }
            _ => i += 1,
        }
    }
    Ok(normal)
}

/// The byte `%XY` stands for, if X and Y are hex digits.
fn escape_value(hi: Option<u8>, lo: Option<u8>) -> Option<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    Some((hex(hi?)? * 16 + hex(lo?)?) as u8)
}

/// RFC 3986 2.3: ALPHA DIGIT `-` `.` `_` `~`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The normal form of a path that starts with `/` and passed [`is_normal`]'s checks.
///
/// NOTE: hand-written rather than with the `percent-encoding` crate (its decoders decode every
/// escape, `%2F` included, which is what must not happen here) or the `url` crate (WHATWG path
/// parsing: it neither decodes unreserved escapes nor merges slashes, and reads backslashes as
/// slashes only for special schemes): the normal form wanted is a few dozen lines.
fn rebuild(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    out.push('/');
    // Where each kept segment starts in `out`, for `..` to cut back to.
    let mut starts: Vec<usize> = Vec::new();
    // The path ends in a slash: its last segment was empty, `.` or `..`.
    let mut trailing = true;
    for raw in path[1..].split('/') {
        let start = out.len();
        push_decoded(&mut out, raw);
        match &out[start..] {
            "" | "." => {
                out.truncate(start);
                trailing = true;
            }
            ".." => {
                out.truncate(starts.pop().unwrap_or(start));
                trailing = true;
            }
            _ => {
                starts.push(start);
                out.push('/');
                trailing = false;
            }
        }
    }
    if !trailing && out.len() > 1 {
        out.pop();
    }
    out
}

/// Appends a segment with its unreserved escapes decoded and the others' hex upper-cased. A bad
/// escape (which callers refused before) is copied as it is.
fn push_decoded(out: &mut String, seg: &str) {
    let mut rest = seg;
    while let Some(p) = rest.find('%') {
        out.push_str(&rest[..p]);
        let b = rest.as_bytes();
        let (hi, lo) = (b.get(p + 1).copied(), b.get(p + 2).copied());
        match (escape_value(hi, lo), hi, lo) {
            (Some(v), _, _) if is_unreserved(v) => out.push(v as char),
            (Some(_), Some(hi), Some(lo)) => {
                out.push('%');
                out.push(hi.to_ascii_uppercase() as char);
                out.push(lo.to_ascii_uppercase() as char);
            }
            _ => {
                out.push('%');
                rest = &rest[p + 1..];
                continue;
            }
        }
        rest = &rest[p + 3..];
    }
    out.push_str(rest);
}

/// Whether a path holds something an upstream may read as a separator where the normal form
/// keeps data: `;` (a path parameter, as Tomcat and Spring cut them off), a backslash, `%2F` or
/// `%5C` (either case).
fn has_separator_lookalike(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().any(|(i, &c)| match c {
        b';' | b'\\' => true,
        b'%' => encoded_separator(b, i),
        _ => false,
    })
}

/// Whether `b[i..]` starts with `%2F` or `%5C` (either case).
fn encoded_separator(b: &[u8], i: usize) -> bool {
    matches!(
        (b.get(i + 1), b.get(i + 2)),
        (Some(b'2'), Some(b'f' | b'F')) | (Some(b'5'), Some(b'c' | b'C'))
    )
}

/// The most separating reading of a path, for [`Table::route`]'s ambiguity check: `%2F`, `%5C`
/// and backslashes are slashes, and each segment loses its `;` parameters (`/..;/admin` is
/// `/../admin`). Its normal form is taken after.
fn separated_reading(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut seg_start = 0;
    let mut i = 0;
    // Every separator is ASCII, so each cut is on a character boundary.
    fn push_segment(out: &mut String, seg: &str) {
        out.push_str(seg.split(';').next().unwrap_or(seg));
    }
    while i < b.len() {
        let width = match b[i] {
            b'/' | b'\\' => 1,
            b'%' if encoded_separator(b, i) => 3,
            _ => {
                i += 1;
                continue;
            }
        };
        push_segment(&mut out, &path[seg_start..i]);
        out.push('/');
        i += width;
        seg_start = i;
    }
    push_segment(&mut out, &path[seg_start..]);
    out
}

/// `path` without `prefix` when it starts with it, always starting with `/` (as Traefik's
/// StripPrefix): `/v1/users` with `/v1/` is `/users`, `/v1/` is `/`, `/v1` with `/v1` is `/`,
/// and `/v1x` with `/v1` is `/x`. A path that does not start with `prefix` is returned as it
/// is. Borrowed unless a `/` had to be added in front.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Cow<'a, str> {
    let Some(rest) = path.strip_prefix(prefix) else {
        return Cow::Borrowed(path);
    };
    if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else if prefix.ends_with('/') {
        // The prefix's own last slash leads the rest.
        Cow::Borrowed(&path[prefix.len() - 1..])
    } else if rest.is_empty() {
        Cow::Borrowed("/")
    } else {
        Cow::Owned(format!("/{rest}"))
    }
}

/// Where a request goes, from [`Table::route`].
#[derive(Debug, Clone, PartialEq)]
pub struct Routed<'a, P = ()> {
    /// The index of the backend in the snapshot's backends: the route's (the one its split
    /// picked for this request, if it has one), else the fallback's;
    /// `None`: no route matches and the frontend has no backend of its own (404).
    pub backend: Option<usize>,
    /// That backend's name.
    pub backend_name: Option<&'a Arc<str>>,
    /// The route that matched; `None` when the fallback serves.
    pub route: Option<&'a Route<P>>,
    /// The policy that applies: the route's, else the table's own (see [`Table::new`]).
    pub policy: &'a P,
    /// The path to forward: `Borrowed` (the request's own path) when it is sent unchanged,
    /// `Owned` when it was normalized or its prefix stripped (put it, and the query, in the
    /// request target's place).
    pub path: Cow<'a, str>,
}

/// The routes of one frontend, in precedence order, with the indexes that make a pick a few
/// hash lookups (a service tree may give a frontend thousands of routes), and its fallback.
#[derive(Debug)]
pub struct Table<P = ()> {
    /// Every route, in precedence order: HTTP routes (exact hosts by name, wildcards longest
    /// suffix first, then host-less; within a host the longest prefix first), then SNI routes
    /// (the same host order); the order in the file breaks ties.
    routes: Vec<Route<P>>,
    /// The HTTP routes.
    http: Index,
    /// The SNI routes.
    sni: Index,
    fallback: Option<(usize, Arc<str>)>,
    /// `Some`: the fallback is a weighted split (`fallback` is then its heaviest backend).
    fallback_split: Option<Arc<Split>>,
    /// The policy of requests no route takes (the fallback's, or the `404`'s).
    policy: P,
}

/// Routes (indexes into `Table::routes`, each group in precedence order) by host.
#[derive(Debug, Default)]
struct Index {
    /// Lower-case host -> its routes.
    exact: FastMap<Box<str>, Group>,
    /// Wildcard suffix (`example.com` for `*.example.com`) -> its routes.
    wildcard: FastMap<Box<str>, Group>,
    /// Routes without a host.
    any: Group,
}

/// Past this many routes, a host's routes are found by prefix lookups rather than a scan.
const GROUP_SCAN_MAX: usize = 8;

/// The routes of one host, longest prefix first (file order among equal prefixes). A host
/// with many (a service tree routing by `path_prefix = "/{service}/"`) also has them by prefix:
/// a pick then looks up the path's own leading bytes once per distinct prefix length, instead
/// of testing every prefix.
#[derive(Debug, Default)]
struct Group {
    routes: Vec<(usize, Box<str>)>,
    /// Built once `routes` is past `GROUP_SCAN_MAX`.
    by_prefix: Option<ByPrefix>,
}

/// A large group's routes by prefix.
#[derive(Debug)]
struct ByPrefix {
    /// Prefix -> the first route (by precedence) with it.
    map: FastMap<Box<str>, usize>,
    /// The distinct prefix lengths, longest first.
    lens: Vec<usize>,
}

impl Group {
    fn push(&mut self, i: usize, prefix: &str) {
        self.routes.push((i, prefix.into()));
    }

    /// Builds the prefix lookup of a large group (after the last `push`).
    fn seal(&mut self) {
        if self.routes.len() <= GROUP_SCAN_MAX {
            return;
        }
        let mut map = FastMap::default();
        let mut lens: Vec<usize> = Vec::new();
        for (i, prefix) in &self.routes {
            map.entry(prefix.clone()).or_insert(*i);
            lens.push(prefix.len());
        }
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        self.by_prefix = Some(ByPrefix { map, lens });
    }

    /// The first route whose prefix starts `path` (any route when `path` is `None`).
    fn first(&self, path: Option<&str>) -> Option<usize> {
        let Some(path) = path else {
            return self.routes.first().map(|(i, _)| *i);
        };
        match &self.by_prefix {
            Some(ByPrefix { map, lens }) => lens
                .iter()
                .filter(|&&n| n <= path.len() && path.is_char_boundary(n))
                .find_map(|&n| map.get(&path[..n]).copied()),
            None => self
                .routes
                .iter()
                .find(|(_, prefix)| path.starts_with(&**prefix))
                .map(|(i, _)| *i),
        }
    }
}

impl Index {
    fn add(&mut self, host: &HostMatch, i: usize, prefix: &str) {
        match host {
            HostMatch::Any => self.any.push(i, prefix),
            HostMatch::Exact(h) => self
                .exact
                .entry(h.as_str().into())
                .or_default()
                .push(i, prefix),
            HostMatch::Wildcard(s) => self
                .wildcard
                .entry(s.as_str().into())
                .or_default()
                .push(i, prefix),
        }
    }

    fn seal(&mut self) {
        self.exact.values_mut().for_each(Group::seal);
        self.wildcard.values_mut().for_each(Group::seal);
        self.any.seal();
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.routes.is_empty()
    }

    /// The first route, by precedence, for a host key ([`host_key`]) whose prefix starts
    /// `path` (`None`: any route of the host, for SNI): the exact host's, then each wildcard
    /// suffix's (cut at each dot with a label before it, longest first), then the host-less
    /// ones.
    fn find(&self, host: Option<&str>, path: Option<&str>) -> Option<usize> {
        if let Some(h) = host {
            if let Some(i) = self.exact.get(h).and_then(|g| g.first(path)) {
                return Some(i);
            }
            if !self.wildcard.is_empty() {
                for (dot, _) in h.match_indices('.').filter(|&(dot, _)| dot > 0) {
                    if let Some(i) = self.wildcard.get(&h[dot + 1..]).and_then(|g| g.first(path)) {
                        return Some(i);
                    }
                }
            }
        }
        self.any.first(path)
    }
}

/// A route's place in precedence order (smaller first); equal keys keep the file's order.
fn precedence<P>(r: &Route<P>) -> (bool, u8, Reverse<usize>, &str, Reverse<usize>) {
    let (host, prefix) = match &r.sni {
        Some(sni) => (sni, 0),
        None => (&r.host, r.path_prefix.len()),
    };
    let (class, suffix, name) = match host {
        HostMatch::Exact(h) => (0, 0, h.as_str()),
        HostMatch::Wildcard(s) => (1, s.len(), s.as_str()),
        HostMatch::Any => (2, 0, ""),
    };
    (r.is_sni(), class, Reverse(suffix), name, Reverse(prefix))
}

impl<P> Table<P> {
    /// Sorts `routes` (given in file order) into precedence order and indexes them. `fallback`
    /// is the frontend's own backend (index and name), served when no route matches, under
    /// `policy` (the frontend's own).
    pub fn new(
        mut routes: Vec<Route<P>>,
        fallback: Option<(usize, Arc<str>)>,
        policy: P,
    ) -> Table<P> {
        // A stable sort: routes of equal precedence keep their order in the file.
        routes.sort_by(|a, b| precedence(a).cmp(&precedence(b)));
        let mut table = Table {
            routes,
            http: Index::default(),
            sni: Index::default(),
            fallback,
            fallback_split: None,
            policy,
        };
        for (i, r) in table.routes.iter().enumerate() {
            match &r.sni {
                Some(sni) => table.sni.add(sni, i, ""),
                None => table.http.add(&r.host, i, &r.path_prefix),
            }
        }
        table.http.seal();
        table.sni.seal();
        table
    }

    /// Makes the fallback a weighted split (the fallback given to [`Table::new`] should be its
    /// heaviest backend, for what names one). HTTP only: [`Table::pick_sni`] keeps the one.
    pub fn with_fallback_split(mut self, split: Option<Arc<Split>>) -> Table<P> {
        self.fallback_split = split;
        self
    }

    /// The fallback's weighted split, if it has one.
    pub fn fallback_split(&self) -> Option<&Split> {
        self.fallback_split.as_deref()
    }

    /// The fallback backend for the next HTTP request no route takes (index and name): its
    /// split's pick, else the fallback.
    pub fn pick_fallback(&self) -> Option<(usize, &Arc<str>)> {
        match &self.fallback_split {
            Some(split) => {
                let w = split.pick();
                Some((w.backend, &w.name))
            }
            None => self.fallback(),
        }
    }

    /// Every route, in precedence order (for the admin listing).
    pub fn routes(&self) -> &[Route<P>] {
        &self.routes
    }

    /// The frontend's own backend (index and name), served when no route matches.
    pub fn fallback(&self) -> Option<(usize, &Arc<str>)> {
        self.fallback.as_ref().map(|(i, name)| (*i, name))
    }

    /// The policy of requests no route takes (the frontend's own).
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// No routes: everything goes to the fallback, and the data plane can skip the host and
    /// path work entirely (and forward the path as it came, as without routes).
    pub fn is_trivial(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether any route is an SNI route.
    pub fn has_sni_routes(&self) -> bool {
        !self.sni.is_empty()
    }

    /// The HTTP route for a host (as received in Host or `:authority`: a `:port`, a trailing
    /// dot and upper case are ignored; `None` when the request has none) and a path that is
    /// already in normal form ([`normalize_path`]; [`Table::route`] takes raw paths). `None`:
    /// no route matches (the fallback serves, if any).
    pub fn pick(&self, host: Option<&str>, path: &str) -> Option<&Route<P>> {
        let key = host.map(host_key);
        self.pick_index(key.as_deref(), path)
            .map(|i| &self.routes[i])
    }

    fn pick_index(&self, key: Option<&str>, path: &str) -> Option<usize> {
        self.http.find(key, Some(path))
    }

    /// Routes a request: its host as in [`Table::pick`], and its path without the query, as
    /// received. The path is normalized ([`normalize_path`]), routed in that form, and forwarded
    /// in that form (less the route's prefix if it strips it). Refused ([`BadPath`]): a path
    /// `normalize_path` refuses, and one with `%2F`, `%5C`, backslashes or `;` parameters that
    /// reading those as separators (see [`BadPath::Ambiguous`]) would send to another route; when
    /// both readings take the same route, it is forwarded with them as they are, so APIs that
    /// put `%2F` inside a segment keep working.
    ///
    /// `*` (`OPTIONS *`) is routed by its host alone, as the path `/` would be, and forwarded
    /// as `*`.
    pub fn route<'a>(
        &'a self,
        host: Option<&str>,
        raw_path: &'a str,
    ) -> Result<Routed<'a, P>, BadPath> {
        let key = host.map(host_key);
        let key = key.as_deref();
        if raw_path == ASTERISK {
            let i = self.pick_index(key, DEFAULT_PATH_PREFIX);
            return Ok(self.routed(i, Cow::Borrowed(raw_path)));
        }
        let path = normalize_path(raw_path)?;
        let i = self.pick_index(key, &path);
        if has_separator_lookalike(&path) {
            let other = rebuild(&separated_reading(&path));
            if self.pick_index(key, &other) != i {
                return Err(BadPath::Ambiguous);
            }
        }
        let path = match i.map(|i| &self.routes[i]) {
            Some(r) if r.strip_prefix => {
                let stripped = strip_prefix(&path, &r.path_prefix);
                if stripped.len() == path.len() {
                    path
                } else {
                    Cow::Owned(stripped.into_owned())
                }
            }
            _ => path,
        };
        Ok(self.routed(i, path))
    }

    fn routed<'a>(&'a self, i: Option<usize>, path: Cow<'a, str>) -> Routed<'a, P> {
        match i.map(|i| &self.routes[i]) {
            Some(r) => {
                let (backend, backend_name) = match &r.split {
                    Some(split) => {
                        let w = split.pick();
                        (w.backend, &w.name)
                    }
                    None => (r.backend, &r.backend_name),
                };
                Routed {
                    backend: Some(backend),
                    backend_name: Some(backend_name),
                    route: Some(r),
                    policy: &r.policy,
                    path,
                }
            }
            None => {
                let fallback = self.pick_fallback();
                Routed {
                    backend: fallback.map(|f| f.0),
                    backend_name: fallback.map(|f| f.1),
                    route: None,
                    policy: &self.policy,
                    path,
                }
            }
        }
    }

    /// The backend for a TLS connection's SNI (`None`: the ClientHello named no server): an
    /// exact name, else the longest wildcard suffix that matches, else an SNI route for any
    /// name, else the fallback.
    pub fn pick_sni(&self, sni: Option<&str>) -> Option<usize> {
        let key = sni.map(host_key);
        match self.sni.find(key.as_deref(), None) {
            Some(i) => Some(self.routes[i].backend),
            None => self.fallback.as_ref().map(|f| f.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP route to backend `backend` (each test gives each route its own backend, so a
    /// pick says which route it took).
    fn http(host: Option<&str>, prefix: &str, backend: usize) -> Route {
        Route {
            host: HostMatch::parse(host).unwrap(),
            path_prefix: parse_path_prefix(Some(prefix)).unwrap(),
            strip_prefix: false,
            sni: None,
            backend,
            backend_name: format!("b{backend}").into(),
            split: None,
            source: Source::Config,
            policy: (),
        }
    }

    fn stripping(host: Option<&str>, prefix: &str, backend: usize) -> Route {
        Route {
            strip_prefix: true,
            ..http(host, prefix, backend)
        }
    }

    fn sni(name: Option<&str>, backend: usize) -> Route {
        Route {
            sni: Some(HostMatch::parse(name).unwrap()),
            ..http(None, "/", backend)
        }
    }

    fn table(routes: Vec<Route>, fallback: Option<usize>) -> Table {
        Table::new(routes, fallback.map(|b| (b, format!("b{b}").into())), ())
    }

    /// The backend a request goes to (panics on a refused path).
    fn to(t: &Table, host: &str, path: &str) -> Option<usize> {
        t.route(Some(host), path).unwrap().backend
    }

    fn norm(p: &str) -> Result<String, BadPath> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn host_parse_reads_exact_wildcard_and_absent() {
        assert_eq!(HostMatch::parse(None), Ok(HostMatch::Any));
        assert_eq!(
            HostMatch::parse(Some("API.Example.com.")),
            Ok(HostMatch::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostMatch::parse(Some("*.Example.COM")),
            Ok(HostMatch::Wildcard("example.com".into()))
        );
        assert_eq!(
            HostMatch::parse(Some("[::1]")),
            Ok(HostMatch::Exact("[::1]".into()))
        );
        assert_eq!(
            HostMatch::parse(Some("10.0.0.1")),
            Ok(HostMatch::Exact("10.0.0.1".into()))
        );
        assert_eq!(
            HostMatch::parse(Some("*.example.com")).unwrap().to_string(),
            "*.example.com"
        );
    }

    #[test]
    fn host_parse_names_what_is_wrong() {
        let err = |h: &str| HostMatch::parse(Some(h)).unwrap_err();
        assert!(err("").contains("empty"), "{}", err(""));
        assert!(err("api.example.com:8080").contains("a port"));
        assert!(err("[::1]:80").contains("a port"));
        assert!(err("::1").contains("brackets"));
        assert!(err("[::1").contains("closing"));
        assert!(err("[nope]").contains("IPv6"));
        assert!(err("*").contains("`*` alone"));
        for h in [
            "a.*.com",
            "*example.com",
            "**.example.com",
            "*.*.example.com",
        ] {
            assert!(err(h).contains("whole first label"), "{h}: {}", err(h));
        }
        assert!(err("a b.com").contains("bad character ' '"));
        assert!(err("a/b.com").contains("bad character '/'"));
        assert!(err("bücher.de").contains("xn--"));
        assert!(err("a..com").contains("empty label"));
        assert!(err(".a.com").contains("empty label"));
        assert!(err("*.").contains("`*` alone"));
        assert!(err(&format!("{}.com", "a".repeat(64))).contains("longer than 63"));
        let long = vec!["a".repeat(63); 4].join(".");
        assert!(err(&long).contains("longer than 253"), "{}", err(&long));
        // The message quotes the value.
        assert!(err("a..com").starts_with("\"a..com\": "));
    }

    #[test]
    fn host_match_ignores_case_port_and_trailing_dot() {
        let m = HostMatch::parse(Some("api.example.com")).unwrap();
        for h in [
            "api.example.com",
            "API.Example.Com",
            "api.example.com:8443",
            "api.example.com.",
            "Api.Example.Com.:80",
        ] {
            assert!(m.matches(h), "{h}");
        }
        for h in ["api.example.org", "xapi.example.com", "example.com", ""] {
            assert!(!m.matches(h), "{h}");
        }
        let t = table(vec![http(Some("api.example.com"), "/", 1)], Some(0));
        assert_eq!(to(&t, "API.EXAMPLE.COM.:8080", "/"), Some(1));
        assert_eq!(to(&t, "api.example.com", "/"), Some(1));
        assert_eq!(to(&t, "web.example.com", "/"), Some(0));
        assert_eq!(t.route(None, "/").unwrap().backend, Some(0));
    }

    #[test]
    fn ipv6_literal_hosts_keep_their_colons() {
        let m = HostMatch::parse(Some("[::1]")).unwrap();
        assert!(m.matches("[::1]"));
        assert!(m.matches("[::1]:80"));
        assert!(!m.matches("[::2]:80"));
        assert!(!m.matches("::1"));
        let t = table(
            vec![
                http(Some("[2001:DB8::1]"), "/", 1),
                http(Some("2001"), "/", 2),
            ],
            Some(0),
        );
        assert_eq!(to(&t, "[2001:db8::1]:8080", "/"), Some(1));
        assert_eq!(to(&t, "[2001:db8::1]", "/x"), Some(1));
        // Not cut at the literal's first colon (that would be host `[2001`).
        assert_eq!(to(&t, "[2001:db8::2]:8080", "/"), Some(0));
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_bare_domain() {
        let m = HostMatch::parse(Some("*.example.com")).unwrap();
        for h in ["a.example.com", "a.b.example.com", "A.Example.com:80"] {
            assert!(m.matches(h), "{h}");
        }
        for h in [
            "example.com",
            ".example.com",
            "aexample.com",
            "a.example.org",
        ] {
            assert!(!m.matches(h), "{h}");
        }
        let t = table(vec![http(Some("*.example.com"), "/", 1)], Some(0));
        assert_eq!(to(&t, "a.example.com", "/"), Some(1));
        assert_eq!(to(&t, "a.b.example.com", "/"), Some(1));
        assert_eq!(to(&t, "example.com", "/"), Some(0));
        assert_eq!(to(&t, "aexample.com", "/"), Some(0));
        assert_eq!(to(&t, ".example.com", "/"), Some(0));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_host() {
        // File order puts the least specific first: precedence, not order, decides.
        let t = table(
            vec![
                http(None, "/", 3),
                http(Some("*.example.com"), "/", 2),
                http(Some("api.example.com"), "/", 1),
            ],
            Some(0),
        );
        assert_eq!(to(&t, "api.example.com", "/x"), Some(1));
        assert_eq!(to(&t, "web.example.com", "/x"), Some(2));
        assert_eq!(to(&t, "example.org", "/x"), Some(3));
    }

    #[test]
    fn longer_wildcard_suffix_beats_shorter() {
        let t = table(
            vec![
                http(Some("*.com"), "/", 3),
                http(Some("*.example.com"), "/", 2),
                http(Some("*.eu.example.com"), "/", 1),
            ],
            None,
        );
        assert_eq!(to(&t, "a.eu.example.com", "/"), Some(1));
        assert_eq!(to(&t, "eu.example.com", "/"), Some(2));
        assert_eq!(to(&t, "a.example.com", "/"), Some(2));
        assert_eq!(to(&t, "example.com", "/"), Some(3));
        assert_eq!(to(&t, "com", "/"), None);
    }

    #[test]
    fn longest_prefix_wins_between_equally_specific_hosts() {
        let t = table(
            vec![
                http(Some("api.example.com"), "/", 1),
                http(Some("api.example.com"), "/v1/", 2),
                http(Some("api.example.com"), "/v1/users", 3),
                http(None, "/v1/users/admin", 4),
            ],
            None,
        );
        assert_eq!(to(&t, "api.example.com", "/v1/users/7"), Some(3));
        assert_eq!(to(&t, "api.example.com", "/v1/x"), Some(2));
        assert_eq!(to(&t, "api.example.com", "/v1"), Some(1));
        // A plain string prefix, as nginx `location /v1/users`: `/v1/usersx` matches too.
        assert_eq!(to(&t, "api.example.com", "/v1/usersx"), Some(3));
        // A host route beats a longer prefix without a host.
        assert_eq!(to(&t, "api.example.com", "/v1/users/admin"), Some(3));
        assert_eq!(to(&t, "other", "/v1/users/admin"), Some(4));
    }

    #[test]
    fn contract_example_falls_through_to_wildcard_then_any_then_fallback() {
        let routes = |wild: bool, any: bool| {
            let mut r = vec![http(Some("api.example.com"), "/v1/", 1)];
            if wild {
                r.push(http(Some("*.example.com"), "/", 2));
            }
            if any {
                r.push(http(None, "/", 3));
            }
            r
        };
        let t = table(routes(true, true), Some(0));
        assert_eq!(to(&t, "api.example.com", "/v1/x"), Some(1));
        assert_eq!(to(&t, "api.example.com", "/other"), Some(2));
        let t = table(routes(false, true), Some(0));
        assert_eq!(to(&t, "api.example.com", "/other"), Some(3));
        let t = table(routes(false, false), Some(0));
        assert_eq!(to(&t, "api.example.com", "/other"), Some(0));
        let t = table(routes(false, false), None);
        let r = t.route(Some("api.example.com"), "/other").unwrap();
        assert_eq!((r.backend, r.route, r.backend_name), (None, None, None));
    }

    #[test]
    fn exact_ties_go_to_the_first_in_the_file() {
        let t = table(
            vec![
                http(Some("*.example.com"), "/a", 1),
                http(Some("api.example.com"), "/v1/", 2),
                http(Some("API.example.com"), "/v1/", 3),
                http(Some("*.example.com"), "/a", 4),
            ],
            None,
        );
        assert_eq!(to(&t, "api.example.com", "/v1/x"), Some(2));
        assert_eq!(to(&t, "web.example.com", "/a"), Some(1));
        let t = table(
            vec![
                http(Some("api.example.com"), "/v1/", 3),
                http(Some("api.example.com"), "/v1/", 2),
            ],
            None,
        );
        assert_eq!(to(&t, "api.example.com", "/v1/x"), Some(3));
    }

    #[test]
    fn fallback_serves_when_nothing_matches() {
        let t = table(vec![http(Some("a.example.com"), "/v1/", 1)], Some(7));
        let r = t.route(Some("b.example.com"), "/v1/x").unwrap();
        assert_eq!(r.backend, Some(7));
        assert_eq!(r.backend_name.map(|n| &**n), Some("b7"));
        assert_eq!(r.route, None);
        assert_eq!(to(&t, "a.example.com", "/v2/"), Some(7));
        assert_eq!(t.fallback().map(|(i, n)| (i, &**n)), Some((7, "b7")));
        let r = t.route(Some("a.example.com"), "/v1/x").unwrap();
        assert_eq!(r.route.map(|r| r.path_prefix.as_str()), Some("/v1/"));
        assert_eq!(r.backend_name.map(|n| &**n), Some("b1"));
    }

    /// The precedence rules restated as a scan of every route, against the table's indexes.
    #[test]
    fn indexed_pick_agrees_with_a_scan_of_every_route() {
        let hosts = [
            None,
            Some("api.example.com"),
            Some("b.api.example.com"),
            Some("*.example.com"),
            Some("*.api.example.com"),
            Some("*.com"),
            Some("example.com"),
        ];
        // Ten prefixes, so that a host's group passes `GROUP_SCAN_MAX` and is found by prefix.
        let prefixes = [
            "/",
            "/v1",
            "/v1/",
            "/v1/users",
            "/admin",
            "/a",
            "/ab",
            "/abc/",
            "/v10/",
            "/%C3%A9/",
        ];
        let mut routes = Vec::new();
        // Every host with every prefix, twice (the second never wins), in a scrambled order.
        for n in 0..hosts.len() * prefixes.len() * 2 {
            let k = (n * 17) % (hosts.len() * prefixes.len());
            routes.push(http(hosts[k % hosts.len()], prefixes[k / hosts.len()], n));
            if n % 3 == 0 {
                routes.pop();
            }
        }
        let t = table(routes.clone(), Some(1000));
        let scan = |host: Option<&str>, path: &str| {
            routes
                .iter()
                .enumerate()
                .filter(|(_, r)| match host {
                    Some(h) => r.host.matches(h),
                    None => r.host == HostMatch::Any,
                })
                .filter(|(_, r)| path.starts_with(r.path_prefix.as_str()))
                .min_by_key(|(i, r)| {
                    let (class, suffix) = match &r.host {
                        HostMatch::Exact(_) => (0, 0),
                        HostMatch::Wildcard(s) => (1, s.len()),
                        HostMatch::Any => (2, 0),
                    };
                    (class, Reverse(suffix), Reverse(r.path_prefix.len()), *i)
                })
                .map_or(1000, |(_, r)| r.backend)
        };
        let mut checked = 0;
        for host in [
            None,
            Some("api.example.com"),
            Some("API.example.com:80"),
            Some("b.api.example.com"),
            Some("c.b.api.example.com"),
            Some("x.example.com"),
            Some("example.com"),
            Some("other.com"),
            Some("com"),
            Some("example.org"),
        ] {
            for path in [
                "/",
                "/v1",
                "/v1/",
                "/v1/users/1",
                "/admin",
                "/v2",
                "/v1x",
                "/abc/d",
                "/ab",
                "/v10/x",
                "/%C3%A9/x",
                "/%C3%A9",
            ] {
                let got = t.route(host, path).unwrap().backend;
                assert_eq!(got, Some(scan(host, path)), "{host:?} {path}");
                checked += 1;
            }
        }
        assert_eq!(checked, 120);
        assert!(
            t.http.exact.values().any(|g| g.by_prefix.is_some()),
            "some host's routes are found by prefix"
        );
    }

    #[test]
    fn a_thousand_host_routes_and_a_pick_finds_its_own() {
        let mut routes = Vec::new();
        for n in 0..1000 {
            routes.push(http(Some(&format!("svc{n}.example.com")), "/", 2 * n));
            routes.push(http(
                Some(&format!("svc{n}.example.com")),
                "/api/",
                2 * n + 1,
            ));
        }
        routes.push(http(Some("*.example.com"), "/", 5000));
        let t = table(routes, None);
        assert_eq!(t.routes().len(), 2001);
        assert_eq!(to(&t, "svc0.example.com", "/"), Some(0));
        assert_eq!(to(&t, "svc737.example.com", "/api/x"), Some(1475));
        assert_eq!(to(&t, "SVC999.example.com:443", "/y"), Some(1998));
        assert_eq!(to(&t, "svc1000.example.com", "/api/x"), Some(5000));
        assert_eq!(t.http.exact.len(), 1000);
        assert_eq!(t.http.exact["svc737.example.com"].routes.len(), 2);
    }

    #[test]
    fn normalize_removes_dot_segments_and_merges_slashes() {
        let cases = [
            ("/", "/"),
            ("/v1/../admin", "/admin"),
            ("/./a//b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/../../..", "/"),
            ("/a//../b", "/b"),
            ("/.../a", "/.../a"),
            ("/a./.b/..c", "/a./.b/..c"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn normalize_decodes_unreserved_escapes_only() {
        let cases = [
            ("/%61dmin", "/admin"),
            ("/%7e", "/~"),
            ("/%7E%2d%5F%2E", "/~-_."),
            ("/%2e%2e/admin", "/admin"),
            ("/v1/%2E%2e/admin", "/admin"),
            ("/a/%2e", "/a/"),
            ("/%2E%2e%2fadmin", "/..%2Fadmin"),
            ("/a/%2Fb", "/a/%2Fb"),
            ("/a/%2fb", "/a/%2Fb"),
            ("/%c3%a9", "/%C3%A9"),
            ("/%20%25%3f", "/%20%25%3F"),
            ("/a%5cb", "/a%5Cb"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn normalize_refuses_bad_escapes_queries_and_relative_paths() {
        for p in ["/%zz", "/a%", "/a%4", "/%4g/x", "/%%41"] {
            assert_eq!(norm(p), Err(BadPath::BadEscape), "{p}");
        }
        for p in ["/a?b", "/a#b", "/?"] {
            assert_eq!(norm(p), Err(BadPath::QueryOrFragment), "{p}");
        }
        for p in ["", "a/b", "*", "%2F", "http://h/"] {
            assert_eq!(norm(p), Err(BadPath::NotAbsolute), "{p}");
        }
    }

    #[test]
    fn normalize_borrows_a_path_already_normal() {
        for p in [
            "/", "/a/b", "/a/b/", "/a%2Fb", "/%C3%A9", "/a;b", "/a\\b", "/é",
        ] {
            let n = normalize_path(p).unwrap();
            assert!(matches!(n, Cow::Borrowed(b) if b == p), "{p}: {n:?}");
        }
        for p in ["/a//b", "/a/./b", "/%2fb", "/%41", "/a/.."] {
            assert!(matches!(normalize_path(p), Ok(Cow::Owned(_))), "{p}");
        }
    }

    #[test]
    fn route_forwards_the_path_it_routed_on() {
        let t = table(
            vec![http(None, "/v1/", 1), http(None, "/admin", 2)],
            Some(0),
        );
        let r = t.route(Some("h"), "/v1/../admin").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(2), "/admin"));
        let r = t.route(Some("h"), "/v1/%2e%2e/admin").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(2), "/admin"));
        let r = t.route(Some("h"), "/%61dmin/x").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(2), "/admin/x"));
        let r = t.route(Some("h"), "//v1//x").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(1), "/v1/x"));
        assert!(matches!(r.path, Cow::Owned(_)));
        let r = t.route(Some("h"), "/v1/x").unwrap();
        assert!(matches!(r.path, Cow::Borrowed("/v1/x")));
        assert_eq!(t.route(Some("h"), "/v1/%zz"), Err(BadPath::BadEscape));
        assert_eq!(t.route(Some("h"), "v1/x"), Err(BadPath::NotAbsolute));
    }

    #[test]
    fn encoded_slash_is_refused_only_when_it_changes_the_route() {
        let t = table(
            vec![
                http(None, "/public/", 1),
                http(None, "/admin/", 2),
                http(None, "/api/", 3),
            ],
            None,
        );
        // An upstream that decodes %2F would serve /admin/x from the /public/ route.
        for p in [
            "/public/..%2Fadmin/x",
            "/public/%2E%2e%2fadmin/x",
            "/public/..%5Cadmin/x",
            "/public/..\\admin/x",
            "/public/..;/admin/x",
            // Tomcat reads this as /admin/x; as data it matches no route.
            "/admin;jsessionid=1/x",
        ] {
            assert_eq!(t.route(None, p), Err(BadPath::Ambiguous), "{p}");
        }
        // %2F inside a segment, either way on the same route: forwarded as it came (hex upper).
        let r = t.route(None, "/api/projects/group%2Fname").unwrap();
        assert_eq!(
            (r.backend, &*r.path),
            (Some(3), "/api/projects/group%2Fname")
        );
        assert!(matches!(r.path, Cow::Borrowed(_)));
        let r = t.route(None, "/api/a%2f..%2fb").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(3), "/api/a%2F..%2Fb"));
        let r = t.route(None, "/api/items;color=red").unwrap();
        assert_eq!(r.backend, Some(3));
        // Both readings find no route: not refused, the same 404.
        let r = t.route(None, "/x/..%2Fy").unwrap();
        assert_eq!(r.backend, None);
        // Escaping the only route towards nothing is refused too.
        let t = table(vec![http(None, "/api/", 3)], None);
        assert_eq!(t.route(None, "/api/..%2Fetc"), Err(BadPath::Ambiguous));
    }

    #[test]
    fn strip_prefix_per_the_contract() {
        let cases = [
            ("/v1/users", "/v1/", "/users"),
            ("/v1/", "/v1/", "/"),
            ("/v1", "/v1", "/"),
            ("/v1/users", "/v1", "/users"),
            ("/v1x", "/v1", "/x"),
            ("/users", "/", "/users"),
            ("/v2/users", "/v1/", "/v2/users"),
        ];
        for (path, prefix, want) in cases {
            assert_eq!(strip_prefix(path, prefix), want, "{path} - {prefix}");
        }
        assert!(matches!(
            strip_prefix("/v1/users", "/v1/"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn route_strips_the_prefix_of_the_route_it_took() {
        let t = table(
            vec![stripping(None, "/v1/", 1), http(None, "/v2/", 2)],
            Some(0),
        );
        let r = t.route(None, "/v1/users").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(1), "/users"));
        assert!(matches!(r.path, Cow::Owned(_)));
        let r = t.route(None, "/v1/").unwrap();
        assert_eq!(&*r.path, "/");
        let r = t.route(None, "/v1/a/../b").unwrap();
        assert_eq!(&*r.path, "/b");
        let r = t.route(None, "/v2/users").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(2), "/v2/users"));
        assert!(matches!(r.path, Cow::Borrowed(_)));
        let r = t.route(None, "/v3").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(0), "/v3"));
        // Prefix "/" strips nothing: still the request's own path.
        let t = table(vec![stripping(None, "/", 1)], None);
        assert!(matches!(
            t.route(None, "/a").unwrap().path,
            Cow::Borrowed("/a")
        ));
    }

    #[test]
    fn asterisk_is_routed_by_host_alone() {
        let t = table(
            vec![
                http(Some("api.example.com"), "/v1/", 1),
                stripping(Some("*.example.com"), "/", 2),
            ],
            Some(0),
        );
        let r = t.route(Some("api.example.com"), "*").unwrap();
        assert_eq!((r.backend, &*r.path), (Some(2), "*"));
        assert_eq!(to(&t, "example.org", "*"), Some(0));
    }

    #[test]
    fn sni_picks_exact_then_longest_wildcard_then_fallback() {
        let t = table(
            vec![
                sni(Some("*.example.com"), 3),
                sni(Some("*.db.example.com"), 2),
                sni(Some("db.example.com"), 1),
                http(Some("db.example.com"), "/", 9),
            ],
            Some(0),
        );
        assert!(t.has_sni_routes());
        assert_eq!(t.pick_sni(Some("db.example.com")), Some(1));
        assert_eq!(t.pick_sni(Some("DB.example.com.")), Some(1));
        assert_eq!(t.pick_sni(Some("a.db.example.com")), Some(2));
        assert_eq!(t.pick_sni(Some("web.example.com")), Some(3));
        assert_eq!(t.pick_sni(Some("example.com")), Some(0));
        assert_eq!(t.pick_sni(None), Some(0));
        // SNI routes take no part in HTTP routing, nor HTTP routes in SNI.
        assert_eq!(to(&t, "web.example.com", "/"), Some(0));
        assert_eq!(to(&t, "db.example.com", "/"), Some(9));
        let t = table(vec![sni(Some("db.example.com"), 1), sni(None, 4)], None);
        assert_eq!(t.pick_sni(Some("other")), Some(4));
        assert_eq!(t.pick_sni(None), Some(4));
        assert_eq!(table(vec![sni(Some("a.b"), 1)], None).pick_sni(None), None);
    }

    #[test]
    fn routes_are_listed_in_precedence_order() {
        let t = table(
            vec![
                sni(Some("db.example.com"), 7),
                http(None, "/", 6),
                http(Some("*.example.com"), "/", 5),
                http(Some("*.a.example.com"), "/", 4),
                http(Some("b.example.com"), "/", 3),
                http(Some("a.example.com"), "/", 2),
                http(Some("a.example.com"), "/long/", 1),
            ],
            None,
        );
        let order: Vec<usize> = t.routes().iter().map(|r| r.backend).collect();
        assert_eq!(order, [1, 2, 3, 4, 5, 6, 7]);
        assert!(!t.is_trivial());
        assert!(t.has_sni_routes());
        let empty = table(vec![], Some(0));
        assert!(empty.is_trivial() && !empty.has_sni_routes());
        assert_eq!(to(&empty, "h", "/x"), Some(0));
        assert!(!table(vec![http(None, "/", 1)], None).has_sni_routes());
    }

    #[test]
    fn path_prefix_must_be_in_normal_form() {
        assert_eq!(parse_path_prefix(None).as_deref(), Ok("/"));
        assert_eq!(parse_path_prefix(Some("/v1/")).as_deref(), Ok("/v1/"));
        let err = |p: &str| parse_path_prefix(Some(p)).unwrap_err();
        assert!(err("v1/").contains("start with '/'"));
        assert!(err("").contains("start with '/'"));
        assert!(err("/v1//").contains("write \"/v1/\""), "{}", err("/v1//"));
        assert!(err("/%61pi/").contains("write \"/api/\""));
        assert!(err("/a/../b").contains("write \"/b\""));
        assert!(err("/%c3%a9").contains("write \"/%C3%A9\""));
        assert!(err("/a%zz").contains("hex digits"));
        assert!(err("/a?b").contains("'?'"));
        for p in ["/a%2Fb/", "/a;b", "/a\\b", "/a%5c"] {
            assert!(err(p).contains("separators"), "{p}: {}", err(p));
        }
    }

    #[test]
    fn source_and_host_serialize_as_written() {
        let json = |v: &dyn erased::Ser| v.json();
        assert_eq!(json(&Source::Config), "\"config\"");
        assert_eq!(json(&Source::Etcd), "\"etcd\"");
        assert_eq!(json(&HostMatch::Any), "null");
        assert_eq!(
            json(&HostMatch::Wildcard("example.com".into())),
            "\"*.example.com\""
        );
        assert_eq!(json(&HostMatch::Exact("a.b".into())), "\"a.b\"");
    }

    mod erased {
        pub trait Ser {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }

    #[test]
    fn a_split_route_picks_its_backends_by_weight() {
        use crate::split::Weighted;
        let w = |backend, weight| Weighted {
            backend,
            name: format!("b{backend}").into(),
            weight,
        };
        let split = Split::new(vec![w(1, 3), w(2, 1), w(3, 0)]).unwrap();
        let r = Route {
            split: Some(Arc::new(split)),
            ..http(Some("shop.example.com"), "/", 1)
        };
        let t = table(vec![r], Some(0));
        let mut counts = [0; 4];
        for _ in 0..400 {
            let routed = t.route(Some("shop.example.com"), "/x").unwrap();
            let b = routed.backend.unwrap();
            // The name is the picked backend's, not the route's first.
            assert_eq!(**routed.backend_name.unwrap(), *format!("b{b}"));
            counts[b] += 1;
        }
        assert_eq!(counts, [0, 300, 100, 0]);
        // Requests the route does not take still go to the fallback.
        assert_eq!(to(&t, "other.example.com", "/"), Some(0));
    }
}
