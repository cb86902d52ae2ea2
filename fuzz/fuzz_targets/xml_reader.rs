//! The XML reader: any bytes are converted to a resource or refused with issues,
//! never a panic; what the strict check accepts is written as XML again and reads
//! back to the same JSON.
#![no_main]

use fhirgate::fhir::{self, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        fhirgate_fuzz::write_seeds_if_asked(fhirgate_fuzz::xml_seeds);
        fhirgate_fuzz::core_model();
    },
    |data: &[u8]| {
        let model = fhirgate_fuzz::core_model();
        let Ok(resource) = fhir::parse_resource(&model, data, Format::Xml) else {
            return;
        };
        let xml = fhir::xml::to_xml(&model, &resource, false)
            .expect("a resource the strict reader accepted is written as XML");
        let back = fhir::read_wire(&model, xml.as_bytes(), Format::Xml)
            .expect("fhirgate's XML of an accepted resource is read back");
        // Member order may differ (XML follows the definitions); values may not.
        assert!(
            back == resource,
            "XML -> JSON -> XML -> JSON changed the resource"
        );
    }
);
