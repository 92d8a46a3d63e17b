//! `qwm inspect` (a bundle's manifest and quantization record) and `qwm verify` (parity with
//! the bundle's PyTorch fixtures).

use crate::bundle::Bundle;
use crate::engine::make_backend_with;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Flags of `qwm inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Bundle folder.
    pub model: PathBuf,
}

/// `qwm inspect`.
pub fn inspect(args: InspectArgs) -> Result<()> {
    let InspectArgs { model } = args;
    let b = Bundle::open(&model)?;
    let m = &b.manifest;
    println!(
        "bundle {} (format {}), env {}",
        model.display(),
        m.format_version,
        m.env
    );
    println!(
        "  image {}x{}, {} tokens x {} + proprio emb {}{}, num_hist {}, frameskip {}, action {}x{}",
        m.image_size,
        m.image_size,
        m.num_patches,
        m.visual_dim,
        m.proprio_emb_dim,
        if m.proprio_tokens > 1 {
            format!(" per token (x{})", m.proprio_tokens)
        } else {
            String::new()
        },
        m.num_hist,
        m.frameskip,
        m.action_dim,
        m.frameskip
    );
    for (role, g) in [
        ("encoder", &m.graphs.encoder),
        ("predictor", &m.graphs.predictor),
    ] {
        println!("  {role}: {} ({} bytes, sha256 ok)", g.file, g.bytes);
        for t in &g.inputs {
            println!("    in  {} {:?}", t.name, t.shape);
        }
        for t in &g.outputs {
            println!("    out {} {:?}", t.name, t.shape);
        }
    }
    for role in crate::bundle::Role::BOTH {
        let q = m.quantization.module(role);
        println!(
            "  {role}: scheme {} method {} form {}",
            q.scheme,
            q.method.map(|m| m.name()).unwrap_or("-"),
            q.form.map(|f| f.name()).unwrap_or("-")
        );
        for l in q.layers() {
            println!(
                "    {:<32} {}x{} w{} {:<9} scales [{:.2e}, {:.2e}] act {}{}",
                l.node,
                l.shape[0],
                l.shape[1],
                l.weight_bits,
                l.group
                    .map(|g| format!("group {g}"))
                    .unwrap_or_else(|| "per-chan".into()),
                l.scale_range[0],
                l.scale_range[1],
                l.activation
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "null".into()),
                l.lowering.map(|o| format!(" -> {o:?}")).unwrap_or_default(),
            );
        }
        let (packed, float) = q.weight_bytes();
        if float > 0 {
            let note = if q.form == Some(crate::bundle::Form::Deploy) {
                "deploy form: integer / packed operators"
            } else {
                "simulate form: weights expanded to float when loaded"
            };
            println!(
                "    quantized Linear weights: {} packed vs {} float ({note})",
                crate::util::fmt::fmt_bytes(packed),
                crate::util::fmt::fmt_bytes(float)
            );
        }
    }
    Ok(())
}

/// Flags of `qwm verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Bundle folder.
    #[arg(long, default_value = "models/wall")]
    pub model: PathBuf,
    /// Execution engine: tract or ort.
    #[arg(long, value_enum, default_value_t = crate::engine::BackendKind::Tract)]
    pub backend: crate::engine::BackendKind,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Path of libonnxruntime for --backend ort.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Write the result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `qwm verify`.
pub fn verify(args: VerifyArgs) -> Result<()> {
    let VerifyArgs {
        model,
        backend,
        threads,
        ort_lib,
        json,
    } = args;
    let b = Bundle::open(&model)?;
    let be = make_backend_with(backend, ort_lib.as_deref())?;
    let r = crate::runtime::verify::verify(
        &b,
        be.as_ref(),
        super::args::default_threads(Some(threads))?,
    )?;
    println!("{} on {}:", model.display(), r.backend);
    for c in &r.checks {
        println!(
            "  {:28} rel err {:9.2e}  (tol {:.0e})  {}",
            c.output,
            c.rel_err,
            c.tol,
            if c.pass { "ok" } else { "FAIL" }
        );
    }
    if let Some(p) = json {
        crate::util::fs::write_atomic(&p, serde_json::to_string_pretty(&r)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if !r.pass() {
        bail!(
            "{}: {} of {} outputs differ from PyTorch beyond tolerance",
            model.display(),
            r.checks.iter().filter(|c| !c.pass).count(),
            r.checks.len()
        );
    }
    Ok(())
}
