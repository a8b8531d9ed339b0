//! Host/authority settling (`forward::settle_authority`): a request as hyper hands it over —
//! a method, a target URI hyper already parsed, any number of Host headers, HTTP/1.1 or h2 —
//! becomes the one authority that routing and the upstream see. Beyond no panic: an accepted
//! request ends with exactly one Host header, equal to the returned authority, which has a
//! host and no userinfo; a refused request keeps its headers.
#![no_main]

use http::{header, HeaderValue, Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use tether_proxy::fuzzing::settle_authority;

/// The input, in a readable form so seeds can be written by hand: the first byte picks the
/// method and (bit 7) h2; then lines: the target, then one Host header value per line.
#[derive(Debug)]
struct Input<'a> {
    method: u8,
    h2: bool,
    target: &'a [u8],
    hosts: Vec<&'a [u8]>,
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Option<Self> {
        let (&first, rest) = data.split_first()?;
        let mut lines = rest.split(|&b| b == b'\n');
        Some(Input {
            method: first & 0x7f,
            h2: first & 0x80 != 0,
            target: lines.next()?,
            hosts: lines.collect(),
        })
    }
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::CONNECT,
    Method::OPTIONS,
    Method::HEAD,
];

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    // The target's own syntax is hyper's (and http's) job: what they refuse never gets here.
    let Ok(uri) = Uri::try_from(input.target) else {
        return;
    };
    let mut req = Request::new(());
    *req.method_mut() = METHODS[usize::from(input.method) % METHODS.len()].clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if input.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    for host in &input.hosts {
        if let Ok(value) = HeaderValue::from_bytes(host) {
            req.headers_mut().append(header::HOST, value);
        }
    }
    let before = req.headers().clone();
    match settle_authority(&mut req) {
        Ok(authority) => {
            let hosts: Vec<_> = req.headers().get_all(header::HOST).iter().collect();
            assert_eq!(hosts.len(), 1, "{input:?}");
            assert_eq!(
                hosts[0].as_bytes(),
                authority.as_str().as_bytes(),
                "{input:?}"
            );
            assert!(!authority.host().is_empty(), "{input:?}");
            assert!(!authority.as_str().contains('@'), "{input:?}");
        }
        Err(_) => assert_eq!(req.headers(), &before, "{input:?}"),
    }
});
