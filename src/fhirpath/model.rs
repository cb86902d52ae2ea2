//! The type information the engine needs about FHIR, as a trait the host implements over the
//! StructureDefinitions of the loaded packages: the children of each type (with their types and
//! cardinality, choice elements included), the type hierarchy (Patient -> DomainResource ->
//! Resource; Age -> Quantity -> Element) and which names are resources or primitives.
//! `NoModel` is an empty implementation: the engine then walks JSON by key only.

/// What the model knows about one child element of a type.
#[derive(Debug, Clone, Copy)]
pub struct ChildInfo<'m> {
    /// The element's type codes (`HumanName`, `string`, `Reference`, ...). A choice element
    /// (`value[x]`) lists every allowed type. An inline BackboneElement/Element is named by its
    /// element path (`Patient.contact`), and `contentReference` elements by the path they refer
    /// to (`Questionnaire.item`); `base_type` of such a name is `BackboneElement` or `Element`.
    pub types: &'m [String],
    /// Whether the element may repeat (max != "1").
    pub many: bool,
    /// Whether the element is a choice (`value[x]`): its JSON key is the name plus the
    /// capitalised type code (`valueQuantity`).
    pub choice: bool,
}

/// FHIR type information, supplied by the host (compiled from StructureDefinitions).
///
/// Type names are FHIR type codes as used in `ElementDefinition.type.code` (`Patient`,
/// `HumanName`, `string`) plus element paths for inline backbone elements. System types
/// (`System.String` ...) are built into the engine and never asked for.
pub trait ModelInfo: Send + Sync {
    /// The child element `name` (as written in the element path, without `[x]`) of a value of
    /// type `parent_type`, including inherited children (`id`, `extension`, `meta`, ...).
    fn child(&self, parent_type: &str, name: &str) -> Option<ChildInfo<'_>>;
    /// The type `type_name` derives from (`Patient` -> `DomainResource`), None at the root.
    fn base_type(&self, type_name: &str) -> Option<&str>;
    /// Whether `name` is a FHIR type (resource, complex or primitive) the model knows.
    fn is_type(&self, name: &str) -> bool;
    /// Whether `name` is a resource type (`Patient`, `Bundle`, `Resource`, `DomainResource`).
    fn is_resource_type(&self, name: &str) -> bool;
    /// Whether `name` is a FHIR primitive type (`string`, `date`, `code`, ...).
    fn is_primitive(&self, name: &str) -> bool;
    /// The names of the children of `type_name` in definition order (for `children()` over a
    /// type and for static checks). The default gives none.
    fn child_names(&self, _type_name: &str) -> Vec<&str> {
        Vec::new()
    }
}

/// A model that knows nothing: navigation goes by JSON key, types of primitives are inferred
/// from the JSON value.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoModel;

impl ModelInfo for NoModel {
    fn child(&self, _parent_type: &str, _name: &str) -> Option<ChildInfo<'_>> {
        None
    }
    fn base_type(&self, _type_name: &str) -> Option<&str> {
        None
    }
    fn is_type(&self, _name: &str) -> bool {
        false
    }
    fn is_resource_type(&self, _name: &str) -> bool {
        false
    }
    fn is_primitive(&self, _name: &str) -> bool {
        false
    }
}

/// Whether `ty` is `ancestor` or derives from it.
pub fn is_a(model: &dyn ModelInfo, ty: &str, ancestor: &str) -> bool {
    let mut t = ty;
    for _ in 0..32 {
        if t == ancestor {
            return true;
        }
        match model.base_type(t) {
            Some(b) => t = b,
            None => return false,
        }
    }
    false
}
