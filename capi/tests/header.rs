//! The committed header `include/qwm.h` is what cbindgen generates from `capi/src/lib.rs`: a
//! change of the ABI without the header (or the reverse) fails here. Regenerate with
//! `QWM_WRITE_HEADER=1 cargo test --release -p qwm-capi --test header`.

#[test]
fn committed_header_matches_the_source() {
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let config =
        cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = format!("{crate_dir}/../include/qwm.h");
    if std::env::var_os("QWM_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/qwm.h differs from what cbindgen generates from capi/src/lib.rs; regenerate it with QWM_WRITE_HEADER=1 cargo test --release -p qwm-capi --test header"
    );
}
