//! Narrative XHTML: the well-formedness gate applied when a resource is read, from
//! JSON and from XML alike (the full txt-1/txt-2 subset rules belong to profile
//! validation). The XML writer copies the narrative as it is, so whatever passes
//! here must be well-formed XML for every reader: every element's attributes are
//! parsed, and every entity reference is one XML predefines or a character
//! reference to a character XML allows.

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
                check_attributes(&e)?;
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
                check_attributes(&e)?;
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
            Ok(Event::GeneralRef(r)) => check_reference(&r)?,
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

/// Most attributes on one element (as the XML reader: FHIR's XHTML needs a few).
const MAX_ATTRIBUTES: usize = 256;

/// Every attribute of an element parses, has a value whose references XML
/// defines, and appears once (duplicates found with a set: linear, not
/// quick-xml's quadratic check).
fn check_attributes(e: &quick_xml::events::BytesStart) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|err| format!("bad attribute: {err}"))?;
        if seen.len() >= MAX_ATTRIBUTES {
            return Err(format!(
                "more than {MAX_ATTRIBUTES} attributes on one element"
            ));
        }
        if !seen.insert(a.key.as_ref().to_vec()) {
            return Err(format!(
                "the attribute `{}` appears twice",
                crate::fhir::types::truncate(&String::from_utf8_lossy(a.key.as_ref()), 40)
            ));
        }
        a.unescape_value()
            .map_err(|err| format!("bad attribute value: {err}"))?;
    }
    Ok(())
}

/// An entity reference in text: one of XML's five, or a character reference to a
/// character XML allows (no DTD can declare others: DOCTYPEs are refused).
fn check_reference(r: &quick_xml::events::BytesRef) -> Result<(), String> {
    let name = String::from_utf8_lossy(r.as_ref());
    if matches!(name.as_ref(), "lt" | "gt" | "amp" | "apos" | "quot") {
        return Ok(());
    }
    let code = if let Some(hex) = name.strip_prefix("#x") {
        u32::from_str_radix(hex, 16).ok()
    } else if let Some(dec) = name.strip_prefix('#') {
        dec.parse::<u32>().ok()
    } else {
        None
    };
    // XML 1.0 2.2: Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
    match code.and_then(char::from_u32) {
        Some(c)
            if matches!(c, '\t' | '\n' | '\r')
                || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}') =>
        {
            Ok(())
        }
        _ => Err(format!(
            "`&{};` is not an entity XML defines",
            crate::fhir::types::truncate(&name, 40)
        )),
    }
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
        assert!(check_div(
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p title="&quot;">&#233;&#x10000;</p></div>"#
        )
        .is_ok());
        for bad in [
            "<div><p>x</p></div>",
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>x</div>"#,
            r#"<span xmlns="http://www.w3.org/1999/xhtml">x</span>"#,
            "plain text",
            r#"<div xmlns="http://www.w3.org/1999/xhtml"/><div xmlns="http://www.w3.org/1999/xhtml"/>"#,
            // Found by the json_reader fuzz target: junk among the div's attributes.
            r#"<div xmlns="http://www.w3.org/1999/xhtml"[>x]</div>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p class="a" class="b">x</p></div>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p a=b>x</p></div>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p title="&nbsp;">x</p></div>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml">&nbsp;</div>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml">&#1;</div>"#,
        ] {
            assert!(check_div(bad).is_err(), "{bad}");
        }
    }
}
