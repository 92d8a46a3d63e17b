//! Any bytes as the encoder graph of the tiny test bundle: loading on tract returns a session or
//! an error naming the graph, and a loaded session runs (or errors) without panicking. Panics
//! inside tract are qwm's to catch, so the fuzzer's abort-on-panic hook is replaced.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qwm::engine::{Backend, LoadOptions, TensorRef};

static MANIFEST: &str = include_str!("../../tests/data/tiny_h3/manifest.json");

fuzz_target!(|data: &[u8]| {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let path = std::path::Path::new("fuzz/encoder.onnx");
    let m = qwm::bundle::parse_manifest(MANIFEST, path).unwrap();
    let spec = m.graphs.encoder.clone();
    let g = qwm::bundle::MappedGraph::from_bytes(path, data, spec.clone()).unwrap();
    match qwm::engine::tract::TractBackend.load(&g, &LoadOptions { threads: 1 }) {
        Err(e) => assert!(e.to_string().contains("encoder.onnx"), "{e}"),
        Ok(session) => {
            let inputs: Vec<(String, Vec<usize>, Vec<f32>)> = spec
                .inputs
                .iter()
                .map(|t| {
                    let shape: Vec<usize> = t
                        .shape
                        .iter()
                        .map(|&d| if d < 0 { 1 } else { d as usize })
                        .collect();
                    let n = shape.iter().product();
                    (t.name.clone(), shape, vec![0.5f32; n])
                })
                .collect();
            let refs: Vec<(&str, TensorRef<'_>)> = inputs
                .iter()
                .map(|(n, s, d)| (n.as_str(), TensorRef { shape: s, data: d }))
                .collect();
            let _ = session.run(&refs);
        }
    }
});
