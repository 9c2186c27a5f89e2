//! The OpenAPI document (generated from the handlers' annotations) and the `/docs` page.

use telemetry_wire::metric::METRICS;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::model::{
    Gpu, GpuList, Health, LastXid, MigView, PodView, ProcessView, Processes, Sample, Telemetry, Xid,
};

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "GPU telemetry API", description = "Live and historical telemetry of every GPU in the cluster."),
    paths(crate::routes::list_gpus, crate::routes::get_gpu, crate::routes::telemetry, crate::routes::processes, crate::routes::dcgm_metrics, crate::routes::stream_all, crate::routes::stream_one, crate::routes::pipeline),
    components(schemas(ErrorBody, ErrorDetail, GpuList<'_>, Gpu<'_>, Health<'_>, Xid, LastXid, PodView<'_>, MigView<'_>, Processes<'_>, ProcessView<'_>, Telemetry<'_>, Sample<'_>, crate::model::Pipeline)),
    modifiers(&Security),
    tags((name = "gpus", description = "GPUs and their telemetry"),
         (name = "metrics", description = "The fleet for Prometheus, as dcgm-exporter exposes it"),
         (name = "pipeline", description = "The ingest path's own state"))
)]
struct ApiDoc;

/// The OpenAPI 3.1 document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page (no external assets) listing the routes, their parameters
/// and the metric table.
pub fn docs_page() -> String {
    let doc = document();
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>GPU telemetry API</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code{background:#eee;padding:0 .2em}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}</style>\
         </head><body><h1>GPU telemetry API</h1>\
         <p>Send the API key as <code>X-API-Key</code> or <code>Authorization: Bearer</code>. \
         Machine-readable: <a href=\"/openapi.json\">/openapi.json</a>.</p>",
    );
    for (path, item) in &doc.paths.paths {
        if let Some(op) = &item.get {
            h.push_str(&format!("<h2><code>GET {}</code></h2>", esc(path)));
            if let Some(s) = &op.summary {
                h.push_str(&format!("<p>{}</p>", esc(s)));
            }
            if let Some(params) = &op.parameters {
                h.push_str("<table><tr><th>parameter</th><th>in</th><th>description</th></tr>");
                for p in params {
                    let loc = serde_json::to_value(&p.parameter_in)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    h.push_str(&format!(
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                        esc(&p.name),
                        esc(&loc),
                        esc(p.description.as_deref().unwrap_or(""))
                    ));
                }
                h.push_str("</table>");
            }
        }
    }
    h.push_str("<h2>Metrics</h2><table><tr><th>name</th><th>unit</th><th>kind</th><th>NVML source</th><th>dcgm-exporter field</th><th>meaning</th></tr>");
    for m in METRICS {
        h.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            m.name,
            esc(m.unit),
            m.kind.as_str(),
            esc(m.nvml),
            esc(m.dcgm),
            esc(m.description)
        ));
    }
    h.push_str("</table></body></html>");
    h
}
