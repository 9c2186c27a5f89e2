//! The built-in dashboard at `/`: static files compiled into the binary (no build step, no
//! files to ship). The page and its assets carry no data and load without a key; the page
//! asks for the API key, keeps it in the tab's session storage and sends it as the
//! `X-API-Key` header on every data call (never in a URL).
//!
//! Charts: uPlot 1.6.32 from npm (`static/vendor/uplot`, MIT, its LICENSE beside it): 51 KB
//! minified, no dependencies, canvas time series fast enough for a week of 1-second samples.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Where it is served.
    pub path: &'static str,
    /// Its Content-Type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// Every file of the dashboard; each is an open route (the REST contract lists them).
pub const ASSETS: [Asset; 5] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../static/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../static/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../static/app.css"),
    },
    Asset {
        path: "/assets/uplot.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../static/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        path: "/assets/uplot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../static/vendor/uplot/uPlot.min.css"),
    },
];

/// What the page may load and where it may connect: its own origin only, no inline script or
/// style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Strong ETags of the assets (a hash of their bytes), made once.
fn etags() -> &'static [String; 5] {
    static TAGS: OnceLock<[String; 5]> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS.each_ref().map(|a| {
            use sha2::{Digest, Sha256};
            format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..12]))
        })
    })
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let a = &ASSETS[i];
    let tag = &etags()[i];
    let mut resp = if crate::routes::etag_matches(headers, tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    // Revalidated on each load: a new binary's files are picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if a.path == "/" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

/// The dashboard's routes (open: no key).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new();
    for (i, a) in ASSETS.iter().enumerate() {
        r = r.route(
            a.path,
            get(move |headers: HeaderMap| async move { serve(i, &headers) }),
        );
    }
    r
}
