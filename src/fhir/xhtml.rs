//! Narrative XHTML: the well-formedness gate applied when a resource is read
//! (the full txt-1/txt-2 subset rules belong to profile validation).

use quick_xml::events::Event;
use quick_xml::Reader;

pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// Checks that `text` is one well-formed `div` element in the XHTML namespace.
pub fn check_div(text: &str) -> Result<(), String> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut seen_root = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if depth == 0 {
                    if seen_root {
                        return Err("more than one root element".into());
                    }
                    check_root(&e)?;
                    seen_root = true;
                }
                depth += 1;
            }
            Ok(Event::Empty(e)) => {
                if depth == 0 {
                    if seen_root {
                        return Err("more than one root element".into());
                    }
                    check_root(&e)?;
                    seen_root = true;
                }
            }
            Ok(Event::End(_)) => {
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Text(t)) => {
                if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) {
                    return Err("text outside the div element".into());
                }
            }
            Ok(Event::DocType(_)) => return Err("a DOCTYPE is not allowed".into()),
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if !seen_root {
        return Err("no div element".into());
    }
    if depth != 0 {
        return Err("unclosed element".into());
    }
    Ok(())
}

fn check_root(e: &quick_xml::events::BytesStart) -> Result<(), String> {
    if e.name().as_ref() != b"div" {
        return Err("the root element must be `div`".into());
    }
    // Without quick-xml's duplicate check, which is quadratic in the attributes.
    let ns = e
        .attributes()
        .with_checks(false)
        .flatten()
        .find(|a| a.key.as_ref() == b"xmlns")
        .map(|a| a.value.into_owned());
    if ns.as_deref() != Some(XHTML_NS.as_bytes()) {
        return Err(format!("the div must declare xmlns=\"{XHTML_NS}\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_namespaced_div_and_refuses_the_rest() {
        assert!(
            check_div(r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>a &amp; b</p></div>"#)
                .is_ok()
        );
        for bad in [
            "<div><p>x</p></div>",
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>x</div>"#,
            r#"<span xmlns="http://www.w3.org/1999/xhtml">x</span>"#,
            "plain text",
            r#"<div xmlns="http://www.w3.org/1999/xhtml"/><div xmlns="http://www.w3.org/1999/xhtml"/>"#,
        ] {
            assert!(check_div(bad).is_err(), "{bad}");
        }
    }
}
