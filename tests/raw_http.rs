//! Hostile raw-byte input to the HTTP frontend: request smuggling and header syntax, Host and
//! sizes, pipelining, hop-by-hop abuse and slow clients (the rows of README "Reliability" that
//! name `cargo test --test raw_http`). Each case writes exact bytes on a raw `TcpStream` and
//! asserts what comes back (a status, with or without a close after it, or a clean close; every
//! read is bounded by a deadline, so a hang fails) and what a recording upstream received
//! (`support::raw::Recorder`: a plain TCP listener registered through a real etcd, which keeps
//! every byte and answers `200 ok` with an `x-path` header). One Etcd + Switchyard per test; the rows of a table run in order.
//!
//! The rule checked on every request that reaches the upstream, in every case: never both
//! Content-Length and Transfer-Encoding, never two Content-Lengths, never a length that is not
//! digits, never a transfer coding other than one `chunked`, never two Hosts.
//!
//! Every row is asserted, always. Run with `-- --nocapture` to see one verdict line per case.
//!
//! ```text
//! case                                   sent                                  answer           upstream sees
//! -- framing_and_request_smuggling (checks off) --
//! cl_te_both / te_cl_both                CL 4 + TE chunked, smuggled GET after 200 then close   one chunked POST, no CL, "abc"
//! cl_conflicting                         CL 3 + CL 4                           400 then close   nothing
//! cl_duplicate_same                      CL 3 + CL 3                           200              one POST, one CL 3
//! cl_list / cl_plus_sign / cl_negative   "3, 3" / "+3" / "-1"                  400 then close   nothing
//! cl_overflow                            CL 99999999999999999999999            400 then close   nothing
//! te_xchunked / te_chunked_identity      xchunked / "chunked, identity"        400 then close   nothing
//! te_two_lines_last_not_chunked          TE chunked + TE identity              400 then close   nothing
//! te_http10                              TE chunked on HTTP/1.0                400 then close   nothing
//! te_gzip_chunked                        TE "gzip, chunked"                    501|400, close   nothing
//! te_identity_then_chunked_lines         TE identity + TE chunked              501|400, close   nothing
//! te_chunked_twice                       TE "chunked, chunked"                 400 then close   nothing
//! te_space_before_colon / cl_...         "Transfer-Encoding : chunked" / CL    400 then close   nothing
//! te_obs_fold / obs_fold                 "TE:\r\n chunked" / "X: a\r\n b"      400 then close   nothing
//! bare_cr_in_value / _line_end / _request_line   a CR without LF               400 then close   nothing
//! nul_in_header_name / _value            NUL byte                              400 then close   nothing
//! space_in_header_name                   "X A: b"                              400 then close   nothing
//! bare_lf_lines                          LF-only line endings                  200              one GET, Host x (CRLF again)
//! -- host_sizes_and_forwarded_headers (checks off) --
//! host_missing_http11                    HTTP/1.1, no Host                     400 then close   nothing
//! host_missing_http10                    HTTP/1.0, no Host                     200 then close   one GET, Host raw (the backend)
//! host_twice                             two Host lines                        400 then close   nothing
//! host_list                              "Host: a.example, b.example"          400 then close   nothing
//! absolute_uri_host_differs              GET http://evil.example/ + Host good  400 then close   nothing
//! absolute_uri_host_matches              GET http://good.example/ + Host good  200              origin-form, Host good.example
//! absolute_uri_without_host              GET http://good.example/, no Host     400 then close   nothing
//! connection_names_host                  "Connection: Host"                    200              Host x kept
//! connection_names_content_length        "Connection: Content-Length" + CL 3   200              one POST, CL 3, "abc"
//! uri_20k                                20 KiB request-target                 414 then close   nothing
//! uri_100k                               100 KiB request-target                414|431 or close nothing
//! header_70k / headers_200               one 70 KiB header / 200 headers       431 (or 400) or close   nothing
//! connection_names_xff                   "Connection: X-Forwarded-For" + XFF   200              XFF exactly 127.0.0.1 (ours)
//! connection_names_forwarded_proto_host  Connection names XFP and XFH          200              XFP http, XFH x, XFF ours
//! xff_spoofed                            XFF 6.6.6.6                           200              XFF "6.6.6.6, 127.0.0.1" (policy:
//!                                                                                               append the peer, like HAProxy)
//! xff_two_lines                          XFF 1.1.1.1 + XFF 2.2.2.2             200              "1.1.1.1, 2.2.2.2, 127.0.0.1"
//! xfp_spoofed                            XFP https                             200              XFP http
//! -- pipelined_requests_stop_at_the_bad_one --
//! 50 pipelined GETs, #25 has CL 1 + CL 2 25 x 200 in order (x-path), 400, close     exactly /p0../p24, in order
//! -- bad_bodies_are_the_clients_fault (tcp checks on, error_limit 1, max_ejected 100%) --
//! chunk_size_not_hex / _overflow         "zz" / 19 hex digits as chunk size    400 or close     no complete request; server up
//! chunk_data_without_crlf                "3\r\nabcXY"                          400 or close     no complete request; server up
//! chunked_missing_last_chunk_then_eof    "3\r\nabc\r\n", then FIN              400 or close     no complete request; server up
//! cl_body_short_then_eof                 CL 10, "abc", then FIN                400 or close     no complete request; server up
//! cl_body_stalls_until_response_timeout  CL 10, "abc", then silence            408 then close   no complete request; server up
//! good_post_after_bad_bodies             CL 3 "abc"                            200              one POST; server up
//! -- slow_clients_are_bounded (header_timeout 1s, idle_timeout 2s, response_timeout 3s) --
//! slowloris_header_byte_every_500ms      a header byte every 500 ms            408|close in [1s, 2.5s]   nothing for /loris
//! idle_connection_sends_nothing          connect, send nothing                 close within 3.5s
//! slow_post_body_byte_every_500ms        CL 1000, a body byte every 500 ms     408|504 + close within 4.5s   no complete request
//! chunked_body_stalls_before_last_chunk  "3\r\nabc\r\n", then silence          408|504 + close within 4.5s
//! slow_upstream_crlf_request             GET /slow (answered after 1.6s)       200
//! slow_upstream_bare_lf_request          the same with LF-only line endings    200
//! client_never_reads_a_large_response    GET /big (1 GiB), never read          others served meanwhile and the relay stalls below
//!                                                                              64 MiB (always); the connection closed within
//!                                                                              idle_timeout + 1.5s
//! ```

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::raw::{self, Drive, End, Exchange, Recorder, Taken};
use support::{Cfg, Etcd, Lb, metric, wait_until};

/// How long one case may take to answer or close before it counts as a hang.
const CASE_DEADLINE: Duration = Duration::from_secs(3);
/// Time for the upstream to record what reached it after the client has its answer (a
/// partial request is recorded when Switchyard drops the upstream connection).
const SETTLE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// The case table.

/// What the client must get back.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A response with one of these statuses; the connection may stay open.
    Status(&'static [u16]),
    /// A response with one of these statuses, then the connection closes.
    StatusThenClose(&'static [u16]),
    /// Such a response then a close, or a close with no response at all.
    StatusOrClose(&'static [u16]),
}

/// What the recording upstream must have received.
#[derive(Debug, Clone, Copy)]
enum Up {
    /// Not one byte.
    Nothing,
    /// Perhaps a request head and part of a body, but no complete request.
    NoComplete,
    /// Exactly one request, complete, and it matches.
    One(Want),
}

#[derive(Debug, Clone, Copy)]
struct Want {
    target: &'static str,
    body: &'static [u8],
    /// `(name, Some(v))`: exactly one such header, with value `v`; `(name, None)`: none.
    headers: &'static [(&'static str, Option<&'static str>)],
}

struct Case {
    name: &'static str,
    send: Vec<u8>,
    /// Shut our write side down after sending (the client hangs up mid-request).
    half_close: bool,
    answer: Answer,
    upstream: Up,
    /// Only with checks on: the server must still be `up` afterwards (a client's bad request
    /// must not eject a server).
    server_stays_up: bool,
}

fn case(name: &'static str, send: impl Into<Vec<u8>>, answer: Answer, upstream: Up) -> Case {
    Case {
        name,
        send: send.into(),
        half_close: false,
        answer,
        upstream,
        server_stays_up: false,
    }
}

impl Case {
    fn half_close(mut self) -> Case {
        self.half_close = true;
        self
    }

    fn server_stays_up(mut self) -> Case {
        self.server_stays_up = true;
        self
    }
}

use Answer::{Status, StatusOrClose, StatusThenClose};
use Up::{NoComplete, Nothing, One};

const BAD: &[u16] = &[400];
const OK: &[u16] = &[200];

/// Request smuggling and header syntax.
fn framing_cases() -> Vec<Case> {
    vec![
        case(
            "cl_te_both",
            "POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            StatusThenClose(OK),
            One(Want {
                target: "/cl-te",
                body: b"abc",
                headers: &[
                    ("content-length", None),
                    ("transfer-encoding", Some("chunked")),
                ],
            }),
        ),
        case(
            "te_cl_both",
            "POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            StatusThenClose(OK),
            One(Want {
                target: "/te-cl",
                body: b"abc",
                headers: &[
                    ("content-length", None),
                    ("transfer-encoding", Some("chunked")),
                ],
            }),
        ),
        case(
            "cl_conflicting",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "cl_duplicate_same",
            "POST /cl-dup HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            Status(OK),
            One(Want {
                target: "/cl-dup",
                body: b"abc",
                headers: &[("content-length", Some("3")), ("transfer-encoding", None)],
            }),
        ),
        case(
            "cl_list",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "cl_plus_sign",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "cl_negative",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nabc",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "cl_overflow",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "cl_over_i64_max",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\nabc",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "te_empty_element_first",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "te_empty_element_middle",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, ,chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "underscore_content_length",
            "POST /us-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent_Length: 10\r\n\r\nabc",
            Status(OK),
            One(Want {
                target: "/us-cl",
                body: b"abc",
                headers: &[("content-length", Some("3")), ("content_length", None)],
            }),
        ),
        case(
            "underscore_transfer_encoding",
            "POST /us-te HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer_Encoding: chunked\r\n\r\nabc",
            Status(OK),
            One(Want {
                target: "/us-te",
                body: b"abc",
                headers: &[
                    ("content-length", Some("3")),
                    ("transfer_encoding", None),
                    ("transfer-encoding", None),
                ],
            }),
        ),
        case(
            "connect_refused",
            "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
            StatusThenClose(&[405]),
            Nothing,
        ),
        case(
            "h2c_upgrade_dropped",
            "GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/h2c",
                body: b"",
                headers: &[("upgrade", None), ("http2-settings", None)],
            }),
        ),
        case(
            "h2_preface_first_line_only",
            "PRI * HTTP/2.0\r\nHost: x\r\n\r\n",
            StatusThenClose(&[400, 505]),
            Nothing,
        ),
        case(
            "empty_lines_before_a_request",
            "\r\n\r\n\nGET /after-blank HTTP/1.1\r\nHost: x\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/after-blank",
                body: b"",
                headers: &[("host", Some("x"))],
            }),
        ),
        case(
            "te_xchunked",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "te_chunked_identity",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "te_two_lines_last_not_chunked",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "te_http10",
            "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "te_gzip_chunked",
            "POST /gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(&[400, 501]),
            Nothing,
        ),
        case(
            "te_identity_then_chunked_lines",
            "POST /id-ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(&[400, 501]),
            Nothing,
        ),
        case(
            "te_chunked_twice",
            "POST /ch-ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "te_space_before_colon",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "cl_space_before_colon",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "te_obs_fold",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "obs_fold",
            "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "bare_cr_in_value",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "bare_cr_line_end",
            "GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "bare_cr_request_line",
            "GET / HTTP/1.1\rHost: x\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "nul_in_header_name",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-\0A: b\r\n\r\n".to_vec(),
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "nul_in_header_value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "space_in_header_name",
            "GET / HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "bare_lf_lines",
            "GET /lf HTTP/1.1\nHost: x\n\n",
            Status(OK),
            One(Want {
                target: "/lf",
                body: b"",
                headers: &[("host", Some("x"))],
            }),
        ),
    ]
}

/// Host, sizes and forwarded headers.
fn host_size_forwarded_cases() -> Vec<Case> {
    let long_uri = |n: usize| {
        let mut r = b"GET /".to_vec();
        r.extend(std::iter::repeat_n(b'u', n));
        r.extend(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        r
    };
    let mut big_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'h', 70 * 1024));
    big_header.extend(b"\r\n\r\n");
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        many.extend(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    vec![
        case(
            "host_missing_http11",
            "GET /no-host HTTP/1.1\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "host_missing_http10",
            "GET /no-host-10 HTTP/1.0\r\n\r\n",
            StatusThenClose(OK),
            One(Want {
                target: "/no-host-10",
                body: b"",
                // Forwarded as HTTP/1.1, which must have one: the backend's name, as nginx does.
                headers: &[("host", Some("raw")), ("x-forwarded-host", None)],
            }),
        ),
        case(
            "host_twice",
            "GET /two-hosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "host_list",
            "GET /host-list HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "absolute_uri_host_differs",
            "GET http://evil.example/abs HTTP/1.1\r\nHost: good.example\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "absolute_uri_host_matches",
            "GET http://good.example/abs-ok HTTP/1.1\r\nHost: good.example\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/abs-ok",
                body: b"",
                headers: &[("host", Some("good.example"))],
            }),
        ),
        case(
            "absolute_uri_without_host",
            "GET http://good.example/abs-no-host HTTP/1.1\r\n\r\n",
            StatusThenClose(BAD),
            Nothing,
        ),
        case(
            "connection_names_host",
            "GET /conn-host HTTP/1.1\r\nHost: x\r\nConnection: Host\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/conn-host",
                body: b"",
                headers: &[("host", Some("x")), ("connection", None)],
            }),
        ),
        case(
            "connection_names_content_length",
            "POST /conn-cl HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc",
            Status(OK),
            One(Want {
                target: "/conn-cl",
                body: b"abc",
                headers: &[("content-length", Some("3")), ("transfer-encoding", None)],
            }),
        ),
        case(
            "uri_20k",
            long_uri(20 * 1024),
            StatusThenClose(&[414]),
            Nothing,
        ),
        case(
            "uri_100k",
            long_uri(100 * 1024),
            StatusOrClose(&[414, 431]),
            Nothing,
        ),
        case("header_70k", big_header, StatusOrClose(&[431]), Nothing),
        case("headers_200", many, StatusOrClose(&[400, 431]), Nothing),
        case(
            "connection_names_xff",
            "GET /conn-xff HTTP/1.1\r\nHost: x\r\nConnection: X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/conn-xff",
                body: b"",
                headers: &[("x-forwarded-for", Some("127.0.0.1")), ("connection", None)],
            }),
        ),
        case(
            "connection_names_forwarded_proto_host",
            "GET /conn-xfp HTTP/1.1\r\nHost: x\r\nConnection: X-Forwarded-Proto, X-Forwarded-Host\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/conn-xfp",
                body: b"",
                headers: &[
                    ("x-forwarded-proto", Some("http")),
                    ("x-forwarded-host", Some("x")),
                    ("x-forwarded-for", Some("127.0.0.1")),
                ],
            }),
        ),
        // The current policy (README "Forwarded headers", like HAProxy's `option forwardfor`):
        // the client's list is kept and the peer appended; only the last entry is trustworthy.
        case(
            "xff_spoofed",
            "GET /xff HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/xff",
                body: b"",
                headers: &[("x-forwarded-for", Some("6.6.6.6, 127.0.0.1"))],
            }),
        ),
        case(
            "xff_two_lines",
            "GET /xff2 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/xff2",
                body: b"",
                headers: &[("x-forwarded-for", Some("1.1.1.1, 2.2.2.2, 127.0.0.1"))],
            }),
        ),
        case(
            "xfp_spoofed",
            "GET /xfp HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\n\r\n",
            Status(OK),
            One(Want {
                target: "/xfp",
                body: b"",
                headers: &[("x-forwarded-proto", Some("http"))],
            }),
        ),
    ]
}

/// Bodies that break after the head was forwarded (run with health checks on, so a wrongly
/// blamed server would be ejected).
fn bad_body_cases() -> Vec<Case> {
    vec![
        case(
            "chunk_size_not_hex",
            "POST /bad-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunk_size_overflow",
            "POST /big-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunk_size_line_empty",
            "POST /chunk-empty HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunk_size_extension_only",
            "POST /chunk-ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunk_size_spaces_only",
            "POST /chunk-sp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n  \r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunk_extension_bare_lf",
            "POST /chunk-lf HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nX\r\nabc\r\n0\r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunk_extension_control_char",
            "POST /chunk-ctl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x01b\r\nabc\r\n0\r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunk_size_over_the_cap",
            "POST /chunk-cap HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000\r\nabc\r\n0\r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunk_data_without_crlf",
            "POST /chunk-crlf HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "chunked_missing_last_chunk_then_eof",
            "POST /no-last HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            StatusOrClose(BAD),
            NoComplete,
        )
        .half_close()
        .server_stays_up(),
        case(
            "cl_body_short_then_eof",
            "POST /short HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
            StatusOrClose(BAD),
            NoComplete,
        )
        .half_close()
        .server_stays_up(),
        case(
            "cl_body_stalls_until_response_timeout",
            "POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
            StatusThenClose(&[408]),
            NoComplete,
        )
        .server_stays_up(),
        case(
            "good_post_after_bad_bodies",
            "POST /good HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            Status(OK),
            One(Want {
                target: "/good",
                body: b"abc",
                headers: &[("content-length", Some("3"))],
            }),
        )
        .server_stays_up(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running a table.

/// One Etcd, one recording upstream registered under `/raw/backend`, one Switchyard.
struct Rig {
    _etcd: Etcd,
    up: Recorder,
    lb: Lb,
}

/// Frontends `web` and `stall`, each with `frontend_extra`, in front of backend `raw`, whose
/// servers are under `/raw/backend` in etcd.
fn config(etcd: &Etcd, frontend_extra: &str, backend_extra: &str, check: &str) -> String {
    Cfg::http("web")
        .frontend_lines(frontend_extra)
        .frontend("stall")
        .frontend_lines(frontend_extra)
        .etcd(&etcd.url())
        .etcd_backend("raw")
        .backend_lines(backend_extra)
        .check(check)
        .toml()
}

impl Rig {
    async fn start(frontend_extra: &str, backend_extra: &str, check: &str) -> Rig {
        let etcd = Etcd::start().await;
        let up = Recorder::start().await;
        etcd.put("/raw/backend/1", &up.addr().to_string()).await;
        let lb = Lb::start_ready(&config(&etcd, frontend_extra, backend_extra, check)).await;
        let rig = Rig {
            _etcd: etcd,
            up,
            lb,
        };
        rig.wait_up().await;
        rig.up.take();
        rig
    }

    fn web(&self) -> SocketAddr {
        self.lb.http_addr("web")
    }

    async fn state(&self) -> String {
        self.state_and_age().await.0
    }

    /// The recording upstream's state in `/api/v1/backends` and how long it has been in it.
    async fn state_and_age(&self) -> (String, Duration) {
        let server = self.lb.server(&self.up.addr().to_string()).await;
        let state = server["state"].as_str().unwrap_or("absent").to_string();
        let age = server["state_age_seconds"].as_f64().unwrap_or(0.0);
        (state, Duration::from_secs_f64(age))
    }

    async fn wait_up(&self) {
        let rig = self;
        wait_until(
            "the recording upstream is listed and up",
            Duration::from_secs(10),
            || async move { rig.state().await == "up" },
        )
        .await;
    }
}

/// Checks the answer against the case; `Err` says how it differs.
fn check_answer(answer: Answer, ex: &Exchange) -> Result<(), String> {
    let first = ex.responses.first().map(|r| r.status);
    let closed = ex.end.closed();
    let ok = match answer {
        Status(codes) => first.is_some_and(|s| codes.contains(&s)),
        StatusThenClose(codes) => {
            first.is_some_and(|s| codes.contains(&s)) && ex.responses.len() == 1 && closed
        }
        StatusOrClose(codes) => {
            closed
                && ex.responses.len() <= 1
                && match first {
                    Some(s) => codes.contains(&s),
                    None => ex.bytes.is_empty(),
                }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("wanted {answer:?}, got {}", ex.describe()))
    }
}

/// Checks what the upstream received; `Err` says how it differs.
fn check_upstream(up: Up, seen: &Taken) -> Result<(), String> {
    let ok = match up {
        Nothing => seen.is_empty(),
        NoComplete => seen.complete().is_empty(),
        One(want) => match seen.requests.as_slice() {
            [r] => {
                r.complete
                    && r.target == want.target
                    && r.body == want.body
                    && want.headers.iter().all(|(name, v)| match v {
                        Some(v) => r.one(name) == Some(v),
                        None => r.all(name).is_empty(),
                    })
            }
            _ => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "wanted upstream {up:?}, it saw {}",
            seen.describe()
        ))
    }
}

/// The rule for every request that reaches the upstream, in every case.
fn check_unambiguous(seen: &Taken) -> Result<(), String> {
    for r in &seen.requests {
        if let Some(why) = r.ambiguity() {
            return Err(format!(
                "upstream got an ambiguous request {} {}: {why}",
                r.method, r.target
            ));
        }
    }
    Ok(())
}

/// Runs every case in order on `rig`; panics at the end with every failure.
async fn run_table(rig: &Rig, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        rig.up.take();
        // Stop reading early once an unwanted status is in: the case has failed already.
        let expected: &[u16] = match c.answer {
            Status(s) | StatusThenClose(s) | StatusOrClose(s) => s,
        };
        let drive = Drive {
            responses: matches!(c.answer, Status(_)).then_some(1),
            unexpected_stops: expected.to_vec(),
            half_close: c.half_close,
            deadline: CASE_DEADLINE,
        };
        let began = Instant::now();
        let ex = raw::exchange(rig.web(), &c.send, &drive).await;
        tokio::time::sleep(SETTLE).await;
        let seen = rig.up.take();
        let mut errs: Vec<String> = [
            check_answer(c.answer, &ex),
            check_upstream(c.upstream, &seen),
            check_unambiguous(&seen),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect();
        if ex.end == End::Deadline && !matches!(c.answer, Status(_)) {
            errs.push(format!("no close within {CASE_DEADLINE:?}"));
        }
        if c.server_stays_up {
            // Checks bring an ejected server back within ~100 ms, so a flip during the case
            // shows as a state younger than the case.
            let (state, age) = rig.state_and_age().await;
            if state != "up" {
                errs.push(format!("the server is {state} afterwards, not up"));
                rig.wait_up().await;
            } else if age < began.elapsed() {
                errs.push(format!(
                    "the server was ejected during the case (up again for {age:?})"
                ));
            }
        }
        if errs.is_empty() {
            println!("{:<40} pass", c.name);
        } else {
            println!("{:<40} FAIL: {}", c.name, errs.join("; "));
            failures.push(format!("{}: {}", c.name, errs.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

const NO_CHECKS: &str = "type = \"none\"";

#[tokio::test]
async fn framing_and_request_smuggling() {
    let rig = Rig::start("", "", NO_CHECKS).await;
    run_table(&rig, framing_cases()).await;
}

#[tokio::test]
async fn host_sizes_and_forwarded_headers() {
    let rig = Rig::start("", "", NO_CHECKS).await;
    run_table(&rig, host_size_forwarded_cases()).await;
}

/// 50 pipelined requests with a bad one (two Content-Lengths) at index 25: the 25 before it
/// are answered in order, then 400 and a close; nothing after it reaches the upstream.
#[tokio::test]
async fn pipelined_requests_stop_at_the_bad_one() {
    let rig = Rig::start("", "", NO_CHECKS).await;
    const BAD_AT: usize = 25;
    let mut bytes = Vec::new();
    for i in 0..50 {
        if i == BAD_AT {
            bytes.extend(
                format!("GET /p{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
                    .as_bytes(),
            );
        } else {
            bytes.extend(format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
    }
    let drive = Drive {
        responses: None,
        unexpected_stops: vec![200, 400],
        half_close: false,
        deadline: Duration::from_secs(10),
    };
    let ex = raw::exchange(rig.web(), &bytes, &drive).await;
    tokio::time::sleep(SETTLE).await;
    let seen = rig.up.take();
    let statuses = ex.statuses();
    let mut want = vec![200; BAD_AT];
    want.push(400);
    assert_eq!(statuses, want, "{}", ex.describe());
    for (i, r) in ex.responses[..BAD_AT].iter().enumerate() {
        assert_eq!(
            r.header("x-path"),
            Some(format!("/p{i}").as_str()),
            "answer {i} out of order"
        );
    }
    assert!(ex.end.closed(), "no close after the 400: {:?}", ex.end);
    let targets: Vec<&str> = seen.requests.iter().map(|r| r.target.as_str()).collect();
    let want: Vec<String> = (0..BAD_AT).map(|i| format!("/p{i}")).collect();
    assert_eq!(targets, want, "upstream saw {}", seen.describe());
    check_unambiguous(&seen).unwrap();
}

/// Bodies that go bad after the head was forwarded must be blamed on the client (400), not
/// the server (502 and a passive ejection). Health checks on, ejection allowed for the only
/// server, so a wrongly blamed server shows as `down`.
#[tokio::test]
async fn bad_bodies_are_the_clients_fault() {
    let rig = Rig::start(
        "",
        "response_timeout = \"1s\"\n[backend.passive]\nerror_limit = 1\nmax_ejected_percent = 100",
        "type = \"tcp\"\ninter = \"200ms\"\nfastinter = \"100ms\"\ndowninter = \"100ms\"\nrise = 1\nfall = 3",
    )
    .await;
    run_table(&rig, bad_body_cases()).await;
}

/// Trailer fields that RFC 9110 6.5.1 forbids (framing, routing, authentication, `content-*`)
/// are dropped on the way to the server; the others pass.
#[tokio::test]
async fn forbidden_trailer_fields_are_dropped() {
    let rig = Rig::start("", "", NO_CHECKS).await;
    let send = "POST /trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 50\r\nHost: evil.example\r\nTransfer-Encoding: chunked\r\nAuthorization: Basic eDp5\r\nContent-Type: text/evil\r\nX-Checksum: 42\r\n\r\n";
    let drive = Drive {
        responses: Some(1),
        unexpected_stops: vec![],
        half_close: false,
        deadline: CASE_DEADLINE,
    };
    let ex = raw::exchange(rig.web(), send.as_bytes(), &drive).await;
    tokio::time::sleep(SETTLE).await;
    let seen = rig.up.take();
    assert_eq!(ex.statuses(), vec![200], "{}", ex.describe());
    assert_only_the_checksum_trailer(&seen);
}

/// The upstream got one complete request, body `abc`, with `x-checksum: 42` as its only
/// trailer field.
fn assert_only_the_checksum_trailer(seen: &Taken) {
    let complete = seen.complete();
    assert_eq!(complete.len(), 1, "{}", seen.describe());
    assert_eq!(complete[0].body, b"abc");
    assert_eq!(
        complete[0].trailers,
        vec![("x-checksum".to_string(), "42".to_string())],
        "{}",
        seen.describe()
    );
}

/// The same over HTTP/2: trailers of an HTTP/2 upload go into the upstream's chunked trailer
/// section without the forbidden fields.
#[tokio::test]
async fn forbidden_trailer_fields_are_dropped_from_http2_uploads() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let rig = Rig::start("", "", NO_CHECKS).await;
    let tcp = TcpStream::connect(rig.web()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("content-length", "50".parse().unwrap());
    trailers.insert("host", "evil.example".parse().unwrap());
    trailers.insert("authorization", "Basic eDp5".parse().unwrap());
    trailers.insert("x-checksum", "42".parse().unwrap());
    // No length: the upstream request goes chunked, which is what carries trailers.
    let frames = vec![
        Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(b"abc"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let req = http::Request::post(format!("http://{}/h2-trailers", rig.web()))
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(CASE_DEADLINE, sender.send_request(req))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(SETTLE).await;
    assert_only_the_checksum_trailer(&rig.up.take());
}

// ---------------------------------------------------------------------------------------------
// Slow clients: slowloris, slow and stalled bodies, idle connections, a client that never reads.

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Scheduling slack on top of a timeout before it counts as not enforced.
const SLACK: Duration = Duration::from_millis(1500);

/// Writes `head` then one byte of `drip` every `every`, reading meanwhile, until the peer
/// answers and closes, or `limit`.
async fn trickle(
    addr: SocketAddr,
    head: &[u8],
    drip: &[u8],
    every: Duration,
    limit: Duration,
) -> Exchange {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let head = head.to_vec();
    let drip = drip.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&head).await;
        for b in drip {
            tokio::time::sleep(every).await;
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
        }
        // Keep the write half open (no FIN) until aborted.
        std::future::pending::<()>().await;
    });
    let (bytes, end) = raw::read_until(&mut rd, start + limit, None, &[]).await;
    writer.abort();
    Exchange {
        responses: raw::parse_responses(&bytes),
        bytes,
        end,
        elapsed: start.elapsed(),
    }
}

/// Checks a slow case: a response in `codes` (or a close with nothing, if `close_ok`), a close,
/// and both within `bound`.
fn check_slow(ex: &Exchange, codes: &[u16], close_ok: bool, bound: Duration) -> Result<(), String> {
    let first = ex.responses.first().map(|r| r.status);
    let answered = match first {
        Some(s) => codes.contains(&s),
        None => close_ok && ex.bytes.is_empty(),
    };
    if answered && ex.end.closed() && ex.elapsed <= bound {
        Ok(())
    } else {
        Err(format!(
            "wanted {codes:?}{} then a close within {bound:?}; got {}",
            if close_ok { " or a bare close" } else { "" },
            ex.describe()
        ))
    }
}

#[tokio::test]
async fn slow_clients_are_bounded() {
    let fe = format!(
        "header_timeout = \"{}ms\"\nidle_timeout = \"{}ms\"",
        HEADER_TIMEOUT.as_millis(),
        IDLE_TIMEOUT.as_millis()
    );
    let be = format!("response_timeout = \"{}ms\"", RESPONSE_TIMEOUT.as_millis());
    let rig = Rig::start(&fe, &be, NO_CHECKS).await;
    let web = rig.web();
    let limit = Duration::from_secs(6);

    // Every slow case at once (they are told apart upstream by their paths).
    let loris = trickle(
        web,
        b"GET /loris HTTP/1.1\r\n",
        b"Host: x\r\nX-Loris: aaaaaaaaaaaaaaaaaaaa\r\n",
        Duration::from_millis(500),
        limit,
    );
    let idle = trickle(web, b"", b"", Duration::ZERO, limit);
    let slow_post = trickle(
        web,
        b"POST /slow-post HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        &[b'p'; 1000],
        Duration::from_millis(500),
        limit,
    );
    let stalled_chunks = trickle(
        web,
        b"POST /stalled-chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"",
        Duration::ZERO,
        limit,
    );
    let one_200 = Drive {
        responses: Some(1),
        unexpected_stops: vec![200],
        half_close: false,
        deadline: limit,
    };
    let crlf = format!("GET {}-crlf HTTP/1.1\r\nHost: x\r\n\r\n", raw::SLOW_PATH);
    let lf = format!("GET {}-lf HTTP/1.1\nHost: x\n\n", raw::SLOW_PATH);
    let slow_answer_crlf = raw::exchange(web, crlf.as_bytes(), &one_200);
    let slow_answer_lf = raw::exchange(web, lf.as_bytes(), &one_200);
    let (loris, idle, slow_post, stalled_chunks, slow_answer_crlf, slow_answer_lf) = tokio::join!(
        loris,
        idle,
        slow_post,
        stalled_chunks,
        slow_answer_crlf,
        slow_answer_lf
    );
    let seen = rig.up.take();
    check_unambiguous(&seen).unwrap();
    let reached = |prefix: &str| {
        seen.requests
            .iter()
            .filter(|r| r.target.starts_with(prefix))
            .collect::<Vec<_>>()
    };

    let mut results: Vec<(&str, Result<(), String>)> = vec![
        (
            "slowloris_header_byte_every_500ms",
            check_slow(&loris, &[408], true, HEADER_TIMEOUT + SLACK).and_then(|()| {
                if loris.elapsed < HEADER_TIMEOUT - Duration::from_millis(100) {
                    Err(format!("closed before header_timeout: {:?}", loris.elapsed))
                } else if !reached("/loris").is_empty() {
                    Err("the upstream saw the slowloris request".into())
                } else {
                    Ok(())
                }
            }),
        ),
        (
            "idle_connection_sends_nothing",
            check_slow(&idle, &[408], true, IDLE_TIMEOUT + SLACK),
        ),
        (
            "slow_post_body_byte_every_500ms",
            check_slow(&slow_post, &[408, 504], false, RESPONSE_TIMEOUT + SLACK).and_then(|()| {
                match reached("/slow-post").iter().any(|r| r.complete) {
                    true => Err("the upstream got the whole slow body".into()),
                    false => Ok(()),
                }
            }),
        ),
        (
            "chunked_body_stalls_before_last_chunk",
            check_slow(
                &stalled_chunks,
                &[408, 504],
                false,
                RESPONSE_TIMEOUT + SLACK,
            ),
        ),
        (
            "slow_upstream_crlf_request",
            match slow_answer_crlf.statuses().first() {
                Some(200) => Ok(()),
                _ => Err(slow_answer_crlf.describe()),
            },
        ),
        (
            "slow_upstream_bare_lf_request",
            match slow_answer_lf.statuses().first() {
                Some(200) => Ok(()),
                _ => Err(slow_answer_lf.describe()),
            },
        ),
    ];
    results.push(never_reads(&rig).await);

    let mut failures = Vec::new();
    for (name, r) in results {
        match r {
            Ok(()) => println!("{name:<40} pass"),
            Err(e) => {
                println!("{name:<40} FAIL: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

/// A client that asks for a large response and never reads it (on frontend `stall`):
/// Switchyard must keep serving others, must not buffer the response without bound, and must
/// close the stalled connection after `idle_timeout`.
async fn never_reads(rig: &Rig) -> (&'static str, Result<(), String>) {
    const NAME: &str = "client_never_reads_a_large_response";
    let stall = rig.lb.http_addr("stall");
    let gauge = "switchyard_connections_active{frontend=\"stall\"}";
    let mut s = TcpStream::connect(stall).await.unwrap();
    s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", raw::BIG_PATH).as_bytes())
        .await
        .unwrap();
    // Let the socket buffers fill, then watch the upstream's progress stop.
    let up = &rig.up;
    wait_until(
        "the large answer started",
        Duration::from_secs(3),
        || async move { up.big_written() > 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let plateau = rig.up.big_written();
    let other = raw::exchange(
        rig.web(),
        b"GET /meanwhile HTTP/1.1\r\nHost: x\r\n\r\n",
        &Drive {
            responses: Some(1),
            unexpected_stops: vec![200],
            half_close: false,
            deadline: Duration::from_secs(2),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = rig.up.big_written();
    // Backpressure: a few socket buffers' worth, not the whole GiB.
    const BOUND: u64 = 64 << 20;
    if other.statuses().first() != Some(&200) {
        return (
            NAME,
            Err(format!(
                "another client was not served meanwhile: {}",
                other.describe()
            )),
        );
    }
    if later > BOUND || later > plateau + (8 << 20) {
        return (
            NAME,
            Err(format!(
                "the response kept flowing with nobody reading: {plateau} then {later} bytes"
            )),
        );
    }
    // Now the stalled connection must be closed within idle_timeout (+ slack) of stalling.
    let deadline = Instant::now() + IDLE_TIMEOUT + SLACK;
    let closed = loop {
        let m = rig.lb.metrics().await;
        if metric(&m, gauge) == 0.0 && rig.up.big_ended() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(s);
    let r = if closed {
        Ok(())
    } else {
        Err(format!(
            "still open {:?} after the client stopped reading ({} of {} bytes relayed, then stuck)",
            IDLE_TIMEOUT + SLACK,
            later,
            raw::BIG_LEN
        ))
    };
    (NAME, r)
}
