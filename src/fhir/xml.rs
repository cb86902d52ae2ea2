//! FHIR XML <-> FHIR JSON, driven by the structure model (no generated code):
//! element order, arrays, attributes (`id`, `url`, `value`), primitive
//! extensions (`_name` in JSON), nested resources and the XHTML narrative all
//! follow the StructureDefinitions. A DTD or entity declaration is refused, never
//! expanded.

use std::fmt::Write as _;
use std::str::FromStr;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use serde_json::{Map, Number, Value};

use super::model::{ElementDef, JsonKind, Model, TypeDef, TypeKind};
use super::outcome::Issue;
use super::types::truncate;
use super::xhtml::XHTML_NS;

pub const FHIR_NS: &str = "http://hl7.org/fhir";

/// Deepest nesting accepted in XML input (FHIR content is far shallower).
const MAX_DEPTH: usize = 128;

/// Most attributes on one element (a FHIR element has `value`, `id` or `url` and
/// perhaps namespace declarations; XHTML a few more). Beyond it the input is
/// refused before its attributes are looked at one by one.
const MAX_ATTRIBUTES: usize = 256;

/// Most namespace declarations in scope at once (FHIR needs two or three). Every
/// element name is resolved against the declarations in scope, so this bounds the
/// work per element.
const MAX_NAMESPACES_IN_SCOPE: usize = 64;

// ---------------------------------------------------------------- JSON -> XML

/// Writes a resource as FHIR XML.
pub fn to_xml(model: &Model, resource: &Value, pretty: bool) -> Result<String, Issue> {
    let mut w = Writer {
        model,
        out: String::with_capacity(4096),
        pretty,
    };
    w.out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    w.newline(0);
    w.resource(resource, 0)?;
    if pretty {
        w.out.push('\n');
    }
    Ok(w.out)
}

struct Writer<'a> {
    model: &'a Model,
    out: String,
    pretty: bool,
}

fn internal(msg: impl Into<String>) -> Issue {
    Issue::error("processing", msg)
}

impl Writer<'_> {
    fn newline(&mut self, depth: usize) {
        if self.pretty {
            if !self.out.is_empty() && !self.out.ends_with('\n') {
                self.out.push('\n');
            }
            for _ in 0..depth {
                self.out.push_str("  ");
            }
        }
    }

    fn resource(&mut self, v: &Value, depth: usize) -> Result<(), Issue> {
        let obj = v
            .as_object()
            .ok_or_else(|| internal("a resource is not an object"))?;
        let rt = obj
            .get("resourceType")
            .and_then(|t| t.as_str())
            .ok_or_else(|| internal("a resource has no resourceType"))?;
        let td = self
            .model
            .type_def(rt)
            .map_err(|e| internal(e.to_string()))?;
        self.newline(depth);
        let _ = write!(self.out, "<{rt} xmlns=\"{FHIR_NS}\">");
        self.children(&td, &td.name, obj, depth + 1, true)?;
        self.newline(depth);
        let _ = write!(self.out, "</{rt}>");
        Ok(())
    }

    fn children(
        &mut self,
        td: &TypeDef,
        node_path: &str,
        obj: &Map<String, Value>,
        depth: usize,
        is_resource: bool,
    ) -> Result<(), Issue> {
        let node = td
            .node(node_path)
            .ok_or_else(|| internal(format!("no definition of {node_path}")))?;
        let mut names: Vec<(usize, &str)> = Vec::with_capacity(obj.len());
        for key in obj.keys() {
            if is_resource && key == "resourceType" {
                continue;
            }
            let base = key.strip_prefix('_').unwrap_or(key);
            let idx = node
                .index_of(base)
                .ok_or_else(|| internal(format!("unknown element {node_path}.{base}")))?;
            if !names.iter().any(|(_, n)| *n == base) {
                names.push((idx, base));
            }
        }
        names.sort_by_key(|(i, _)| *i);
        for (_, name) in names {
            let Some((el, chosen)) = node.child(name) else {
                continue;
            };
            if el.xml_attr && !is_resource {
                continue;
            }
            let value = obj.get(name);
            let ext = obj.get(&format!("_{name}"));
            if el.many {
                let values = value.and_then(|v| v.as_array());
                let exts = ext.and_then(|v| v.as_array());
                let n = values.map_or(0, Vec::len).max(exts.map_or(0, Vec::len));
                for i in 0..n {
                    let v = values.and_then(|a| a.get(i)).filter(|v| !v.is_null());
                    let e = exts.and_then(|a| a.get(i)).filter(|v| !v.is_null());
                    self.element(td, el, chosen, name, v, e, depth)?;
                }
            } else {
                self.element(td, el, chosen, name, value, ext, depth)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn element(
        &mut self,
        td: &TypeDef,
        el: &ElementDef,
        chosen: Option<&str>,
        name: &str,
        value: Option<&Value>,
        ext: Option<&Value>,
        depth: usize,
    ) -> Result<(), Issue> {
        if let Some(inline) = &el.inline {
            let obj = value
                .and_then(|v| v.as_object())
                .ok_or_else(|| internal(format!("{name} is not an object")))?;
            let node = td
                .node(inline)
                .ok_or_else(|| internal(format!("no definition of {inline}")))?;
            self.open_complex(name, node, obj, depth);
            self.children(td, inline, obj, depth + 1, false)?;
            self.newline(depth);
            let _ = write!(self.out, "</{name}>");
            return Ok(());
        }
        let t = chosen
            .or_else(|| el.types.first().map(String::as_str))
            .ok_or_else(|| internal(format!("{name} has no type")))?;
        if t == "Resource" || self.model.is_resource_type(t) {
            let v = value.ok_or_else(|| internal(format!("{name} has no resource")))?;
            self.newline(depth);
            let _ = write!(self.out, "<{name}>");
            self.resource(v, depth + 1)?;
            self.newline(depth);
            let _ = write!(self.out, "</{name}>");
            return Ok(());
        }
        let ctd = self
            .model
            .type_def(t)
            .map_err(|e| internal(e.to_string()))?;
        if ctd.kind == TypeKind::Primitive {
            if t == "xhtml" {
                if let Some(Value::String(s)) = value {
                    self.newline(depth);
                    // Checked on write; text stored before that check is kept
                    // well-formed here.
                    match super::types::forbidden_char(s) {
                        None => self.out.push_str(s),
                        Some(_) => self.out.extend(s.chars().map(|c| {
                            if super::types::is_forbidden_char(c) {
                                '\u{fffd}'
                            } else {
                                c
                            }
                        })),
                    }
                }
                return Ok(());
            }
            self.newline(depth);
            let _ = write!(self.out, "<{name}");
            let ext_obj = ext.and_then(|e| e.as_object());
            if let Some(id) = ext_obj.and_then(|e| e.get("id")).and_then(|i| i.as_str()) {
                self.attr("id", id);
            }
            if let Some(v) = value {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(internal(format!("{name} is not a primitive"))),
                };
                self.attr("value", &text);
            }
            let exts = ext_obj
                .and_then(|e| e.get("extension"))
                .and_then(|x| x.as_array());
            match exts {
                Some(exts) if !exts.is_empty() => {
                    self.out.push('>');
                    let ext_el = self
                        .model
                        .type_def("Element")
                        .map_err(|e| internal(e.to_string()))?;
                    let (el_def, _) = ext_el
                        .root()
                        .child("extension")
                        .ok_or_else(|| internal("Element.extension is not defined"))?;
                    for x in exts {
                        self.element(&ext_el, el_def, None, "extension", Some(x), None, depth + 1)?;
                    }
                    self.newline(depth);
                    let _ = write!(self.out, "</{name}>");
                }
                _ => self.out.push_str("/>"),
            }
            return Ok(());
        }
        let obj = value
            .and_then(|v| v.as_object())
            .ok_or_else(|| internal(format!("{name} is not an object")))?;
        self.open_complex(name, ctd.root(), obj, depth);
        self.children(&ctd, &ctd.name, obj, depth + 1, false)?;
        self.newline(depth);
        let _ = write!(self.out, "</{name}>");
        Ok(())
    }

    fn open_complex(
        &mut self,
        name: &str,
        node: &super::model::Node,
        obj: &Map<String, Value>,
        depth: usize,
    ) {
        self.newline(depth);
        let _ = write!(self.out, "<{name}");
        for el in node.elements.iter().filter(|e| e.xml_attr) {
            if let Some(Value::String(s)) = obj.get(&el.name) {
                let s = s.clone();
                self.attr(&el.name, &s);
            }
        }
        self.out.push('>');
    }

    fn attr(&mut self, name: &str, value: &str) {
        let _ = write!(self.out, " {name}=\"");
        for c in value.chars() {
            match c {
                '&' => self.out.push_str("&amp;"),
                '<' => self.out.push_str("&lt;"),
                '>' => self.out.push_str("&gt;"),
                '"' => self.out.push_str("&quot;"),
                // Attribute-value normalisation would turn these into spaces.
                '\n' => self.out.push_str("&#10;"),
                '\r' => self.out.push_str("&#13;"),
                '\t' => self.out.push_str("&#9;"),
                // XML 1.0 cannot carry these at all, not even as references: a
                // message that quotes what a client sent must stay well-formed.
                c if super::types::is_forbidden_char(c) => self.out.push('\u{fffd}'),
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

// ---------------------------------------------------------------- XML -> JSON

/// A parsed XML element: FHIR elements keep attributes and children; an XHTML
/// element keeps its exact source text.
#[derive(Debug)]
struct XNode {
    local: String,
    ns: Option<String>,
    attrs: Vec<(String, String)>,
    children: Vec<XNode>,
    raw: Option<String>,
}

fn syntax(msg: impl Into<String>) -> Issue {
    Issue::error("structure", msg)
}

/// Reads FHIR XML into FHIR JSON. The result still has to pass the JSON checks.
pub fn from_xml(model: &Model, text: &str) -> Result<Value, Issue> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = parse_dom(text)?;
    let mut r = Reader { model };
    r.resource(&root, None)
}

fn resolve_ns(r: &ResolveResult) -> Result<Option<String>, Issue> {
    match r {
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.as_ref()).into_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(p) => Err(syntax(format!(
            "undeclared namespace prefix `{}`",
            String::from_utf8_lossy(p)
        ))),
    }
}

/// The namespace declarations of an element, after checking that it has at most
/// [`MAX_ATTRIBUTES`] attributes: one pass, without quick-xml's duplicate check
/// (quadratic in the number of attributes: 100,000 took 8.6 s).
fn attribute_budget(e: &BytesStart) -> Result<usize, Issue> {
    let mut attributes = 0usize;
    let mut declarations = 0usize;
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|err| syntax(format!("bad attribute: {err}")))?;
        attributes += 1;
        if attributes > MAX_ATTRIBUTES {
            return Err(syntax(format!(
                "an element has more than {MAX_ATTRIBUTES} attributes"
            )));
        }
        if a.key.as_namespace_binding().is_some() {
            declarations += 1;
        }
    }
    Ok(declarations)
}

fn start_node(e: &BytesStart, ns: Option<String>) -> Result<XNode, Issue> {
    let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    // Duplicates are found with a set: one pass (XML 1.0 3.1, unique attributes).
    let mut seen = std::collections::HashSet::new();
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|err| syntax(format!("bad attribute in <{local}>: {err}")))?;
        let key = a.key;
        if !seen.insert(key.as_ref().to_vec()) {
            return Err(syntax(format!(
                "<{}> has the attribute `{}` twice",
                crate::fhir::types::truncate(&local, 40),
                crate::fhir::types::truncate(&String::from_utf8_lossy(key.as_ref()), 40)
            )));
        }
        if key.as_ref() == b"xmlns" || key.prefix().is_some() {
            continue; // namespace declarations and foreign (xsi:, xml:) attributes
        }
        let value = a
            .unescape_value()
            .map_err(|err| syntax(format!("bad attribute value in <{local}>: {err}")))?
            .into_owned();
        attrs.push((String::from_utf8_lossy(key.as_ref()).into_owned(), value));
    }
    Ok(XNode {
        local,
        ns,
        attrs,
        children: Vec::new(),
        raw: None,
    })
}

fn parse_dom(text: &str) -> Result<XNode, Issue> {
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<XNode> = Vec::new();
    // The namespace declarations of each open element, and their sum.
    let mut declared: Vec<usize> = Vec::new();
    let mut in_scope = 0usize;
    let mut root: Option<XNode> = None;
    loop {
        let before = reader.buffer_position() as usize;
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| syntax(format!("the body is not well-formed XML: {e}")))?;
        let (ns, declarations) = match &event {
            Event::Start(e) | Event::Empty(e) => {
                let d = attribute_budget(e)?;
                if in_scope + d > MAX_NAMESPACES_IN_SCOPE {
                    return Err(syntax(format!(
                        "more than {MAX_NAMESPACES_IN_SCOPE} namespace declarations are in scope"
                    )));
                }
                (resolve_ns(&ns)?, d)
            }
            _ => (None, 0),
        };
        match event {
            Event::DocType(_) => {
                return Err(syntax(
                    "XML with a DOCTYPE (DTD or entity declarations) is not accepted",
                ))
            }
            Event::Start(e) => {
                if ns.as_deref() == Some(XHTML_NS) {
                    let name = e.name().as_ref().to_vec();
                    reader
                        .read_to_end(quick_xml::name::QName(&name))
                        .map_err(|err| {
                            syntax(format!("the narrative is not well-formed XML: {err}"))
                        })?;
                    let end = reader.buffer_position() as usize;
                    let mut node = start_node(&e, ns)?;
                    node.raw = Some(text.get(before..end).unwrap_or_default().to_string());
                    attach(&mut stack, &mut root, node)?;
                    continue;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(syntax("the XML nests too deeply"));
                }
                let node = start_node(&e, ns)?;
                stack.push(node);
                declared.push(declarations);
                in_scope += declarations;
            }
            Event::Empty(e) => {
                let mut node = start_node(&e, ns.clone())?;
                if ns.as_deref() == Some(XHTML_NS) {
                    let end = reader.buffer_position() as usize;
                    node.raw = Some(text.get(before..end).unwrap_or_default().to_string());
                }
                attach(&mut stack, &mut root, node)?;
            }
            Event::End(_) => {
                in_scope = in_scope.saturating_sub(declared.pop().unwrap_or(0));
                let node = stack.pop().ok_or_else(|| syntax("unbalanced end tag"))?;
                attach(&mut stack, &mut root, node)?;
            }
            Event::Text(t) => {
                if !t.iter().all(u8::is_ascii_whitespace) {
                    return Err(syntax(
                        "FHIR XML elements carry values in `value` attributes, not as text",
                    ));
                }
            }
            Event::CData(_) => return Err(syntax("CDATA is not allowed in FHIR XML")),
            Event::GeneralRef(_) => {
                return Err(syntax(
                    "entity references are not allowed outside attribute values",
                ))
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(syntax("the XML ends inside an element"));
    }
    root.ok_or_else(|| syntax("the body holds no XML element"))
}

fn attach(stack: &mut [XNode], root: &mut Option<XNode>, node: XNode) -> Result<(), Issue> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => {
            if root.is_some() {
                return Err(syntax("more than one root element"));
            }
            *root = Some(node);
        }
    }
    Ok(())
}

struct Reader<'a> {
    model: &'a Model,
}

impl Reader<'_> {
    fn resource(&mut self, x: &XNode, path: Option<&str>) -> Result<Value, Issue> {
        let here = path.unwrap_or("$this").to_string();
        if x.ns.as_deref() != Some(FHIR_NS) {
            return Err(syntax(format!(
                "<{}> is not in the FHIR namespace {FHIR_NS}",
                truncate(&x.local, 80)
            ))
            .at(here));
        }
        if !self.model.is_resource_type(&x.local) {
            return Err(Issue::error(
                "not-supported",
                format!(
                    "`{}` is not a FHIR R4 resource type",
                    truncate(&x.local, 80)
                ),
            )
            .at(here));
        }
        let td = self
            .model
            .type_def(&x.local)
            .map_err(|e| Issue::error("exception", e.to_string()))?;
        let path = path.map(str::to_string).unwrap_or_else(|| x.local.clone());
        let mut obj = Map::new();
        obj.insert("resourceType".into(), Value::String(x.local.clone()));
        self.fill(&td, &td.name, x, &mut obj, &path, true)?;
        Ok(Value::Object(obj))
    }

    fn fill(
        &mut self,
        td: &TypeDef,
        node_path: &str,
        x: &XNode,
        obj: &mut Map<String, Value>,
        path: &str,
        is_resource: bool,
    ) -> Result<(), Issue> {
        self.fill_parts(td, node_path, &x.attrs, &x.children, obj, path, is_resource)
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_parts(
        &mut self,
        td: &TypeDef,
        node_path: &str,
        attrs: &[(String, String)],
        children: &[XNode],
        obj: &mut Map<String, Value>,
        path: &str,
        is_resource: bool,
    ) -> Result<(), Issue> {
        let node = td
            .node(node_path)
            .ok_or_else(|| syntax(format!("no definition of {node_path}")).at(path))?;
        for (k, v) in attrs {
            match node.child(k) {
                Some((el, _)) if el.xml_attr && !is_resource => {
                    obj.insert(k.clone(), Value::String(v.clone()));
                }
                _ => {
                    return Err(
                        syntax(format!("unexpected attribute `{}`", truncate(k, 80))).at(path),
                    )
                }
            }
        }
        // Group children by name, in order of first appearance.
        let mut groups: Vec<(&str, Vec<&XNode>)> = Vec::new();
        for c in children {
            match groups.iter_mut().find(|(n, _)| *n == c.local) {
                Some((_, v)) => v.push(c),
                None => groups.push((&c.local, vec![c])),
            }
        }
        for (name, items) in groups {
            let el_path = format!("{path}.{name}");
            let Some((el, chosen)) = node.child(name) else {
                return Err(
                    syntax(format!("unrecognised element `{}`", truncate(name, 80))).at(el_path),
                );
            };
            if el.xml_attr && !is_resource {
                return Err(syntax(format!("`{name}` must be an attribute")).at(el_path));
            }
            if !el.many && items.len() > 1 {
                return Err(syntax(format!("`{name}` does not repeat")).at(el_path));
            }
            let t = chosen.or_else(|| el.types.first().map(String::as_str));
            let is_xhtml = t == Some("xhtml") && el.inline.is_none();
            for item in &items {
                let ns_ok = if is_xhtml {
                    item.ns.as_deref() == Some(XHTML_NS)
                } else {
                    item.ns.as_deref() == Some(FHIR_NS)
                };
                if !ns_ok {
                    return Err(
                        syntax(format!("<{name}> is in the wrong namespace")).at(el_path.clone())
                    );
                }
            }
            if el.inline.is_none() && t.is_some_and(|t| !self.is_complex(t)) && !is_xhtml {
                self.primitives(el, t.unwrap_or_default(), name, &items, obj, &el_path)?;
                continue;
            }
            let mut values = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let p = if el.many {
                    format!("{el_path}[{i}]")
                } else {
                    el_path.clone()
                };
                values.push(self.value(td, el, t, item, &p)?);
            }
            if el.many {
                obj.insert(name.to_string(), Value::Array(values));
            } else if let Some(v) = values.pop() {
                obj.insert(name.to_string(), v);
            }
        }
        Ok(())
    }

    fn is_complex(&self, t: &str) -> bool {
        t == "Resource"
            || self.model.is_resource_type(t)
            || self
                .model
                .type_def(t)
                .map(|td| td.kind != TypeKind::Primitive)
                .unwrap_or(true)
    }

    fn value(
        &mut self,
        td: &TypeDef,
        el: &ElementDef,
        t: Option<&str>,
        x: &XNode,
        path: &str,
    ) -> Result<Value, Issue> {
        if let Some(inline) = &el.inline {
            let mut o = Map::new();
            self.fill(td, inline, x, &mut o, path, false)?;
            return Ok(Value::Object(o));
        }
        let t = t.ok_or_else(|| syntax("element has no type").at(path))?;
        if t == "xhtml" {
            return Ok(Value::String(x.raw.clone().unwrap_or_default()));
        }
        if t == "Resource" || self.model.is_resource_type(t) {
            if !x.attrs.is_empty() || x.children.len() != 1 {
                return Err(syntax("must hold exactly one resource").at(path));
            }
            return self.resource(&x.children[0], Some(path));
        }
        let ctd = self
            .model
            .type_def(t)
            .map_err(|e| Issue::error("exception", e.to_string()).at(path))?;
        let mut o = Map::new();
        self.fill(&ctd, &ctd.name, x, &mut o, path, false)?;
        Ok(Value::Object(o))
    }

    fn primitives(
        &mut self,
        el: &ElementDef,
        t: &str,
        name: &str,
        items: &[&XNode],
        obj: &mut Map<String, Value>,
        path: &str,
    ) -> Result<(), Issue> {
        let ptd = self
            .model
            .type_def(t)
            .map_err(|e| Issue::error("exception", e.to_string()).at(path))?;
        let kind = ptd.primitive.as_ref().map_or(JsonKind::String, |p| p.json);
        let element_td = self
            .model
            .type_def("Element")
            .map_err(|e| Issue::error("exception", e.to_string()).at(path))?;
        let mut values = Vec::with_capacity(items.len());
        let mut exts = Vec::with_capacity(items.len());
        for (i, x) in items.iter().enumerate() {
            let p = if el.many {
                format!("{path}[{i}]")
            } else {
                path.to_string()
            };
            let mut value = Value::Null;
            let mut ext = Map::new();
            for (k, v) in &x.attrs {
                match k.as_str() {
                    "value" => value = typed(kind, v, t).map_err(|m| m.at(p.clone()))?,
                    "id" => {
                        ext.insert("id".into(), Value::String(v.clone()));
                    }
                    other => {
                        return Err(syntax(format!(
                            "unexpected attribute `{}`",
                            truncate(other, 80)
                        ))
                        .at(p))
                    }
                }
            }
            if !x.children.is_empty() {
                let mut holder = Map::new();
                self.fill_parts(
                    &element_td,
                    "Element",
                    &[],
                    &x.children,
                    &mut holder,
                    &p,
                    false,
                )?;
                for (k, v) in holder {
                    ext.insert(k, v);
                }
            }
            if value.is_null() && ext.is_empty() {
                return Err(syntax(format!("`{name}` has neither a value nor extensions")).at(p));
            }
            values.push(value);
            exts.push(if ext.is_empty() {
                Value::Null
            } else {
                Value::Object(ext)
            });
        }
        let any_value = values.iter().any(|v| !v.is_null());
        let any_ext = exts.iter().any(|v| !v.is_null());
        if el.many {
            if any_value {
                obj.insert(name.to_string(), Value::Array(values));
            }
            if any_ext {
                obj.insert(format!("_{name}"), Value::Array(exts));
            }
        } else {
            if let Some(v) = values.pop().filter(|v| !v.is_null()) {
                obj.insert(name.to_string(), v);
            }
            if let Some(e) = exts.pop().filter(|v| !v.is_null()) {
                obj.insert(format!("_{name}"), e);
            }
        }
        Ok(())
    }
}

/// A `value` attribute as the JSON type of its primitive.
fn typed(kind: JsonKind, text: &str, type_name: &str) -> Result<Value, Issue> {
    match kind {
        JsonKind::String => Ok(Value::String(text.to_string())),
        JsonKind::Boolean => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(Issue::error(
                "value",
                format!("`{}` is not a valid boolean", truncate(text, 80)),
            )),
        },
        JsonKind::Integer | JsonKind::Decimal => {
            let ok_chars = !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
            let n = ok_chars.then(|| Number::from_str(text).ok()).flatten();
            match n {
                Some(n) => Ok(Value::Number(n)),
                None => Err(Issue::error(
                    "value",
                    format!("`{}` is not a valid {type_name}", truncate(text, 80)),
                )),
            }
        }
    }
}
