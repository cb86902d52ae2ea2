//! The HTML pages of the authorization endpoint, rendered with `minijinja`
//! (HTML auto-escaping for `.html` templates): login, patient picker, consent,
//! and the error page shown when nothing may be sent back to the client. Plain
//! forms (`<form method="post">`) with every value the next step needs in an
//! `<input type="hidden">`, so a script can fill them (DESIGN section 11).

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use minijinja::Environment;
use serde::Serialize;

/// A hidden input.
#[derive(Debug, Clone, Serialize)]
pub struct Hidden {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct PatientChoice {
    pub reference: String,
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct ScopeChoice {
    pub scope: String,
    pub label: String,
}

pub struct Pages {
    env: Environment<'static>,
}

/// A template environment holding `(name, source)` templates, each compiled
/// once (`.html` ones auto-escaped); a template that does not compile is the
/// error. The authorization pages' and the console's.
pub(crate) fn templates(
    sources: &[(&'static str, &'static str)],
) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    for &(name, src) in sources {
        env.add_template(name, src).map_err(|e| e.to_string())?;
    }
    Ok(env)
}

impl Pages {
    pub fn new() -> Result<Pages, String> {
        let env = templates(&[
            ("layout.html", include_str!("templates/layout.html")),
            ("login.html", include_str!("templates/login.html")),
            ("patient.html", include_str!("templates/patient.html")),
            ("consent.html", include_str!("templates/consent.html")),
            ("error.html", include_str!("templates/error.html")),
        ])?;
        Ok(Pages { env })
    }

    /// A rendered page; a template failure is a plain 500 page (a bug, logged).
    /// `redirect_uri`: the client's, where the page's form may end (see
    /// [`form_action`]).
    pub fn render(
        &self,
        status: StatusCode,
        name: &str,
        ctx: minijinja::Value,
        redirect_uri: Option<&str>,
    ) -> HttpResponse {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => HttpResponse::build(status)
                .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header(("X-Frame-Options", "DENY"))
                .insert_header((
                    header::CONTENT_SECURITY_POLICY,
                    format!(
                        "default-src 'none'; style-src 'unsafe-inline'; form-action {}; frame-ancestors 'none'",
                        form_action(redirect_uri)
                    ),
                ))
                .body(html),
            Err(e) => {
                tracing::error!(error = %e, template = name, "an authorization page failed to render");
                HttpResponse::InternalServerError()
                    .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
                    .body("the page could not be shown")
            }
        }
    }

    /// The error page: nothing goes back to the client's redirect URI.
    pub fn error(&self, status: StatusCode, message: &str) -> HttpResponse {
        self.render(
            status,
            "error.html",
            minijinja::context! { message => message },
            None,
        )
    }
}

/// The CSP `form-action` sources of a page. A login, picker or consent form is
/// answered with a redirect to the client's redirect URI, and browsers check
/// `form-action` on every redirect after the submission too (CSP 3, "form-action":
/// Chromium blocked the SMART JavaScript client's redirect back to its own
/// origin under `form-action 'self'` alone), so that URI's origin is allowed;
/// for a private-use scheme (a native app), the scheme.
fn form_action(redirect_uri: Option<&str>) -> String {
    let source = redirect_uri.and_then(|u| {
        let (scheme, rest) = u.split_once(':')?;
        let source = match rest.strip_prefix("//") {
            Some(rest) if matches!(scheme, "http" | "https") => {
                let authority = rest.split(['/', '?', '#']).next()?;
                let host = authority.rsplit('@').next()?;
                format!("{scheme}://{host}")
            }
            _ => format!("{scheme}:"),
        };
        // Nothing that could end the source list or start another directive.
        source
            .chars()
            .all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '-' | '+' | '[' | ']')
            })
            .then_some(source)
    });
    match source {
        Some(s) => format!("'self' {s}"),
        None => "'self'".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_in_the_html() {
        let pages = Pages::new().unwrap();
        let r = pages
            .env
            .get_template("login.html")
            .unwrap()
            .render(minijinja::context! {
                client_name => "<script>x</script>",
                action => "/auth/authorize",
                hidden => vec![Hidden { name: "state".into(), value: "\"><b>".into() }],
                error => None::<String>,
            })
            .unwrap();
        assert!(!r.contains("<script>x"));
        assert!(r.contains("&lt;script&gt;"));
        assert!(
            r.contains(r#"name="state" value="&quot;&gt;&lt;b&gt;""#),
            "{r}"
        );
        assert!(r.contains(r#"name="username""#) && r.contains(r#"name="password""#));
    }

    #[test]
    fn forms_may_end_at_the_redirect_uris_origin() {
        assert_eq!(form_action(None), "'self'");
        assert_eq!(
            form_action(Some("http://127.0.0.1:8081/app/index.html?x=1")),
            "'self' http://127.0.0.1:8081"
        );
        assert_eq!(
            form_action(Some("https://user@app.example/cb")),
            "'self' https://app.example"
        );
        assert_eq!(
            form_action(Some("com.example.app:/callback")),
            "'self' com.example.app:"
        );
        assert_eq!(
            form_action(Some("https://a.example;script-src/cb")),
            "'self'"
        );
    }
}
