//! The console's HTML: minijinja templates (auto-escaped, as every `.html`
//! template is), compiled into the binary and loaded once, and the headers
//! every console page carries (no caching, no framing, a CSP that allows the
//! console's own stylesheet and forms and nothing else: no script runs).

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use minijinja::Environment;

/// The stylesheet, served at `/console/console.css`.
pub const CSS: &str = include_str!("templates/console.css");

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub fn new() -> Result<Pages, String> {
        let env = crate::auth::templates(&[
            ("layout.html", include_str!("templates/layout.html")),
            ("login.html", include_str!("templates/login.html")),
            ("message.html", include_str!("templates/message.html")),
            ("rows.html", include_str!("templates/rows.html")),
            ("search.html", include_str!("templates/search.html")),
            ("event.html", include_str!("templates/event.html")),
            (
                "disclosures.html",
                include_str!("templates/disclosures.html"),
            ),
            ("chain.html", include_str!("templates/chain.html")),
        ])?;
        Ok(Pages { env })
    }

    /// The page as HTML text (a template failure is a bug: logged, and None).
    pub fn html(&self, name: &str, ctx: minijinja::Value) -> Option<String> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| {
                tracing::error!(error = %e, template = name, "a console page failed to render");
            })
            .ok()
    }

    /// A rendered page with the console's headers.
    pub fn render(&self, status: StatusCode, name: &str, ctx: minijinja::Value) -> HttpResponse {
        match self.html(name, ctx) {
            Some(html) => page(status, html),
            None => page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error</title><p>The page could not be shown.</p>".into(),
            ),
        }
    }

    /// A page that says one thing and offers nothing else (refusals, errors).
    pub fn message(&self, status: StatusCode, title: &str, message: &str) -> HttpResponse {
        self.render(
            status,
            "message.html",
            minijinja::context! { title => title, message => message },
        )
    }
}

fn page(status: StatusCode, html: String) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .body(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_escaped() {
        let pages = Pages::new().unwrap();
        let evil = "<script>alert(1)</script>\"'";
        let row = minijinja::context! {
            id => evil, recorded => evil, action => "R", subtype => evil, outcome => evil,
            user => evil, client => evil, address => evil, entity => evil, purposeOfUse => evil,
        };
        let html = pages
            .html(
                "search.html",
                minijinja::context! {
                    viewer => minijinja::context! { username => evil, role => "compliance", csrf => evil },
                    page => "search",
                    form => minijinja::context! { patient => evil, user => evil, client => evil, from => evil, to => evil, action => "", outcome => "" },
                    actions => Vec::<minijinja::Value>::new(),
                    outcomes => Vec::<minijinja::Value>::new(),
                    rows => vec![row],
                    next => evil,
                },
            )
            .unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)"), "{html}");
        assert!(html.contains("&quot;&#x27;"), "{html}");
        for name in [
            "patient", "user", "client", "from", "to", "action", "outcome",
        ] {
            assert!(html.contains(&format!("name=\"{name}\"")), "{name}");
        }
    }
}
