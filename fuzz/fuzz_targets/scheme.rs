//! Any text as a quantization scheme: parse returns Ok or an error naming the flag, and a parsed
//! scheme prints back to text that parses to the same scheme.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qwm::quant::scheme::Scheme;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Scheme::parse(text, "--encoder") {
            Ok(s) => assert_eq!(Scheme::parse(&s.to_string(), "--encoder").unwrap(), s),
            Err(e) => assert!(e.to_string().contains("--encoder")),
        }
    }
});
