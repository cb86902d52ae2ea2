//! `htmlChecks()`: the rules FHIR R4 puts on narrative XHTML (invariant txt-1): well-formed
//! XHTML in the XHTML namespace, a `div` root, only the basic HTML 4.0 formatting elements and
//! their attributes, `<a>` with `name` or `href`, images, `style` attributes; no scripts,
//! forms, frames, event handler attributes or `javascript:` links.

const ELEMENTS: [&str; 58] = [
    "p",
    "br",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "a",
    "span",
    "b",
    "em",
    "i",
    "strong",
    "small",
    "big",
    "tt",
    "dfn",
    "q",
    "var",
    "abbr",
    "acronym",
    "cite",
    "blockquote",
    "hr",
    "address",
    "bdo",
    "kbd",
    "sub",
    "sup",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "pre",
    "table",
    "caption",
    "colgroup",
    "col",
    "thead",
    "tr",
    "tfoot",
    "tbody",
    "th",
    "td",
    "code",
    "samp",
    "img",
    "map",
    "area",
    "u",
    "s",
    "strike",
    "center",
    "font",
];

const COMMON_ATTRIBUTES: [&str; 10] = [
    "title",
    "style",
    "class",
    "id",
    "lang",
    "xml:lang",
    "dir",
    "accesskey",
    "tabindex",
    "xmlns",
];

fn element_attribute_allowed(element: &str, attr: &str) -> bool {
    if COMMON_ATTRIBUTES.contains(&attr) || attr.starts_with("xmlns:") {
        return true;
    }
    match element {
        "a" => matches!(
            attr,
            "href" | "name" | "rel" | "rev" | "shape" | "coords" | "type" | "hreflang" | "charset"
        ),
        "img" => matches!(
            attr,
            "src"
                | "alt"
                | "title"
                | "height"
                | "width"
                | "longdesc"
                | "usemap"
                | "ismap"
                | "align"
                | "border"
                | "hspace"
                | "vspace"
        ),
        "table" => matches!(
            attr,
            "summary"
                | "width"
                | "border"
                | "frame"
                | "rules"
                | "cellspacing"
                | "cellpadding"
                | "align"
                | "bgcolor"
        ),
        "th" | "td" => matches!(
            attr,
            "abbr"
                | "axis"
                | "headers"
                | "scope"
                | "rowspan"
                | "colspan"
                | "align"
                | "char"
                | "charoff"
                | "valign"
                | "nowrap"
                | "bgcolor"
                | "width"
                | "height"
        ),
        "tr" | "thead" | "tbody" | "tfoot" | "col" | "colgroup" => matches!(
            attr,
            "align" | "char" | "charoff" | "valign" | "span" | "width" | "bgcolor"
        ),
        "area" => matches!(attr, "shape" | "coords" | "href" | "nohref" | "alt"),
        "map" => matches!(attr, "name"),
        "ol" | "ul" | "li" => matches!(attr, "type" | "start" | "value" | "compact"),
        "blockquote" | "q" => attr == "cite",
        "br" => attr == "clear",
        "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "caption" | "hr" => {
            matches!(attr, "align" | "noshade" | "size" | "width")
        }
        "pre" => attr == "width",
        "font" => matches!(attr, "size" | "color" | "face"),
        _ => false,
    }
}

/// Checks a narrative `div`; Err names the first problem found.
pub fn html_checks(xhtml: &str) -> Result<(), String> {
    let s = xhtml.trim();
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut stack: Vec<String> = Vec::new();
    let mut seen_root = false;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            if stack.is_empty() && !bytes[i].is_ascii_whitespace() {
                return Err("text outside the root div".into());
            }
            i += 1;
            continue;
        }
        let rest = &s[i..];
        if rest.starts_with("<!--") {
            let end = rest.find("-->").ok_or("unterminated comment")?;
            i += end + 3;
            continue;
        }
        if rest.starts_with("<?") {
            let end = rest
                .find("?>")
                .ok_or("unterminated processing instruction")?;
            i += end + 2;
            continue;
        }
        if rest.starts_with("<!") {
            return Err("DOCTYPE or CDATA not allowed".into());
        }
        let end = tag_end(rest).ok_or("unterminated tag")?;
        let tag = &rest[1..end];
        i += end + 1;
        if let Some(name) = tag.strip_prefix('/') {
            let name = local(name.trim());
            match stack.pop() {
                Some(open) if open == name => continue,
                _ => return Err(format!("unbalanced closing tag </{name}>")),
            }
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, attrs) = match tag.find(|c: char| c.is_whitespace()) {
            Some(p) => (&tag[..p], &tag[p..]),
            None => (tag, ""),
        };
        let name = local(name);
        if stack.is_empty() {
            if seen_root {
                return Err("more than one root element".into());
            }
            seen_root = true;
            if name != "div" {
                return Err("the narrative root must be a div".into());
            }
            if !attrs.contains("http://www.w3.org/1999/xhtml") {
                return Err("the narrative div must be in the XHTML namespace".into());
            }
        }
        if !ELEMENTS.contains(&name.as_str()) {
            return Err(format!("element <{name}> is not allowed in narrative"));
        }
        for (attr, value) in parse_attributes(attrs)? {
            if !element_attribute_allowed(&name, &attr) {
                return Err(format!("attribute '{attr}' is not allowed on <{name}>"));
            }
            if matches!(attr.as_str(), "href" | "src")
                && value.trim().to_ascii_lowercase().starts_with("javascript:")
            {
                return Err("javascript: links are not allowed".into());
            }
        }
        if !self_closing {
            stack.push(name);
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed element <{}>", stack.join("><")));
    }
    if !seen_root {
        return Err("no root div".into());
    }
    Ok(())
}

fn local(name: &str) -> String {
    match name.split_once(':') {
        Some((_, l)) => l.to_string(),
        None => name.to_string(),
    }
}

/// Index of the `>` that ends the tag starting at `s[0] == '<'`, skipping quoted values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (None, '"') | (None, '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            (None, '<') => return None,
            _ => {}
        }
    }
    None
}

fn parse_attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("attribute without value")?;
        let name = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let q = after.chars().next().ok_or("attribute without value")?;
        if q != '"' && q != '\'' {
            return Err("unquoted attribute value".into());
        }
        let close = after[1..].find(q).ok_or("unterminated attribute value")?;
        out.push((name, after[1..1 + close].to_string()));
        rest = after[close + 2..].trim_start();
    }
    Ok(out)
}
