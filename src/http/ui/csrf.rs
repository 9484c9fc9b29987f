//! Same-origin checks for the dashboard's writes, and whether a request came over TLS.

use axum::http::{HeaderMap, Uri, header};

/// `Ok` when the request's `Origin` (or, without one, its `Referer`) names the host and port it was sent to.
/// A request with neither is refused: every browser sends `Origin` on a form POST, so only a non-browser client
/// omits both, and it can call the API instead.
pub fn check(headers: &HeaderMap, uri: &Uri) -> Result<(), String> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .ok_or_else(|| "the request names no Host".to_string())?;
    let (which, source) = match headers.get(header::ORIGIN) {
        Some(o) => ("Origin", o),
        None => match headers.get(header::REFERER) {
            Some(r) => ("Referer", r),
            None => {
                return Err(
                    "the request carries neither Origin nor Referer, so it cannot be told apart from a \
                     cross-site one; submit the form from the dashboard"
                        .into(),
                );
            }
        },
    };
    let source = source
        .to_str()
        .map_err(|_| format!("its {which} header is not text"))?;
    // An opaque origin (sandboxed frame, `data:` page) sends "null": never this dashboard.
    let from = url::Url::parse(source).map_err(|_| format!("its {which} is not a URL"))?;
    if !matches!(from.scheme(), "http" | "https") {
        return Err(format!("its {which} is not an http(s) page"));
    }
    if host.contains(['@', '/', '\\', '?', '#']) {
        return Err("its Host header is malformed".into());
    }
    // Parse the Host with the origin's scheme, so a missing port means that scheme's default on both sides.
    let to = url::Url::parse(&format!("{}://{host}/", from.scheme()))
        .map_err(|_| "its Host header is malformed".to_string())?;
    let same = from.host_str().map(str::to_ascii_lowercase)
        == to.host_str().map(str::to_ascii_lowercase)
        && from.port_or_known_default() == to.port_or_known_default();
    if same {
        Ok(())
    } else {
        Err(format!(
            "it was sent to {host} from a page of another origin ({which}: {}); forms of the dashboard post only \
             to the dashboard that served them",
            from.origin().ascii_serialization()
        ))
    }
}

/// Whether the browser reached us over TLS: directly (an `https` request URI), or through a proxy that says
/// so (`X-Forwarded-Proto`, `Forwarded: proto=`), or as the page's own `Origin` shows. A client that lies
/// only makes its own cookie stricter or looser.
pub fn came_over_https(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded_proto = text("x-forwarded-proto")
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = text("forwarded").is_some_and(|v| {
        v.split([';', ','])
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| {
                k.eq_ignore_ascii_case("proto") && v.trim_matches('"').eq_ignore_ascii_case("https")
            })
    });
    let origin = text("origin").is_some_and(|o| o.starts_with("https://"));
    forwarded_proto || forwarded || origin
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ok(pairs: &[(&'static str, &'static str)]) -> bool {
        check(&headers(pairs), &Uri::from_static("/ui/new/create")).is_ok()
    }

    #[test]
    fn same_origin_passes() {
        assert!(ok(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ]));
        assert!(ok(&[
            ("host", "Dash.Example.com"),
            ("origin", "https://dash.example.com")
        ]));
        assert!(ok(&[
            ("host", "dash.example.com:443"),
            ("origin", "https://dash.example.com")
        ]));
        assert!(ok(&[
            ("host", "[::1]:8080"),
            ("origin", "http://[::1]:8080")
        ]));
        assert!(ok(&[("host", "h:1"), ("referer", "http://h:1/ui/new?x=1")]));
    }

    #[test]
    fn other_origins_and_missing_headers_are_refused() {
        assert!(!ok(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8081")
        ]));
        assert!(!ok(&[("host", "h"), ("origin", "null")]));
        assert!(!ok(&[("host", "h"), ("origin", "file://h")]));
        assert!(!ok(&[("host", "h")]));
        assert!(!ok(&[("host", "evil@h"), ("origin", "http://h")]));
        // Origin wins over a same-origin Referer.
        assert!(!ok(&[
            ("host", "h"),
            ("origin", "http://evil"),
            ("referer", "http://h/ui")
        ]));
    }

    #[test]
    fn tls_is_seen_through_proxies() {
        assert!(came_over_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(came_over_https(&headers(&[(
            "forwarded",
            "for=1.2.3.4;proto=https"
        )])));
        assert!(came_over_https(&headers(&[("origin", "https://h")])));
        assert!(!came_over_https(&headers(&[("origin", "http://h")])));
    }
}
