//! Any bytes as manifest.json: parse + validate must return Ok or an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = std::path::Path::new("fuzz/manifest.json");
        if let Ok(m) = qwm::bundle::parse_manifest(text, path) {
            // A valid manifest serializes and parses back to itself.
            let again = serde_json::to_string(&m).unwrap();
            assert_eq!(qwm::bundle::parse_manifest(&again, path).unwrap(), m);
        }
    }
});
