//! The resource readers never panic: arbitrary bytes, and R4 examples with bytes
//! cut, flipped or spliced, are either read or refused with issues.

use fhirgate::fhir::{self, Format};
use proptest::prelude::*;

use crate::support;

fn example_texts() -> &'static [(String, String)] {
    static TEXTS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| {
        let model = support::core_model();
        support::r4_examples()
            .iter()
            .step_by(37)
            .map(|(_, v)| {
                let json = serde_json::to_string(v).unwrap();
                let xml = fhir::xml::to_xml(&model, v, false).unwrap();
                (json, xml)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let model = support::core_model();
        let _ = fhir::parse_resource(&model, &bytes, Format::Json);
        let _ = fhir::parse_resource(&model, &bytes, Format::Xml);
    }

    #[test]
    fn mutated_examples_never_panic(pick in 0usize..20, cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), byte in any::<u8>(), splice in any::<prop::sample::Index>()) {
        let model = support::core_model();
        let texts = example_texts();
        let (json, xml) = &texts[pick % texts.len()];
        for text in [json.as_bytes(), xml.as_bytes()] {
            let mut b = text.to_vec();
            let i = flip.index(b.len());
            b[i] = byte;
            let j = splice.index(b.len());
            b.splice(j..j, text[..cut.index(text.len())].iter().copied().take(64));
            let k = cut.index(b.len());
            for candidate in [&b[..], &b[..k]] {
                let _ = fhir::parse_resource(&model, candidate, Format::Json);
                let _ = fhir::parse_resource(&model, candidate, Format::Xml);
            }
        }
    }
}
