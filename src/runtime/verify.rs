//! `qwm verify`: run a bundle's PyTorch parity fixtures through qwm's own runtime.
//!
//! An exported bundle carries, under `fixtures/`, inputs and the PyTorch outputs for them: the
//! encoder and the predictor on a small batch, and (bundles from `models/export_dinowm.py`) a
//! 5-step rollout of candidate action sequences from an observed history, computed by DINO-WM's
//! own rollout. Verifying runs the same inputs through a backend (graph by graph, and the rollout
//! through [`WorldModel::rollout`], the code the planner uses) and compares each output with its
//! fixture as max |qwm - torch| / max |torch|. Any non-finite output fails.

use crate::bundle::Bundle;
use crate::engine::{Backend, LoadOptions, Session, Tensor, TensorRef};
use crate::error::{QwmError, Result};
use crate::runtime::model::{Latent, WorldModel};
use ndarray::ArrayD;
use serde::Serialize;
use std::path::Path;

/// Tolerance on a single graph call (float32 kernels differ in summation order).
pub const GRAPH_TOL: f64 = 1e-4;
/// Tolerance on the last frame of a multi-step rollout (errors compound over the steps).
pub const ROLLOUT_TOL: f64 = 1e-3;

/// One compared output.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Fixture name, e.g. `predictor_next_visual`.
    pub output: String,
    /// max |qwm - torch| / max |torch| (infinite when qwm produced a non-finite value).
    pub rel_err: f64,
    /// The tolerance it is held to.
    pub tol: f64,
    /// Whether `rel_err <= tol`.
    pub pass: bool,
}

/// The outcome of verifying one bundle on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Backend name.
    pub backend: String,
    /// Every compared output.
    pub checks: Vec<Check>,
}

impl VerifyReport {
    /// True when every check passed.
    pub fn pass(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
}

/// A fixture array: read only from a regular file (a FIFO is refused, not waited on), and only
/// finite values (a reference with NaN or Inf would let any output pass or fail).
fn fixture(bundle: &Path, name: &str) -> Result<ArrayD<f32>> {
    use ndarray_npy::ReadNpyExt;
    let p = bundle.join("fixtures").join(format!("{name}.npy"));
    // Fixtures are small: 1 GiB bounds the read; the header's shape must then fit the bytes
    // that follow it before anything of that shape is allocated.
    let bytes = crate::util::fs::read_regular(&p, 1 << 30).map_err(|e| QwmError::io(&p, e))?;
    check_npy_size(&bytes)
        .map_err(|m| QwmError::bundle(&p, format!("cannot read fixture: {m}")))?;
    let a = ArrayD::<f32>::read_npy(std::io::Cursor::new(&bytes))
        .map_err(|e| QwmError::bundle(&p, format!("cannot read fixture: {e}")))?;
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        return Err(QwmError::bundle(
            &p,
            format!(
                "fixture holds a non-finite value ({} at flat index {i}): a reference must be finite",
                a.iter().nth(i).copied().unwrap_or(f32::NAN)
            ),
        ));
    }
    Ok(a)
}

/// The `.npy` header's shape, as 4-byte elements, must fit in the bytes after the header.
fn check_npy_size(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file".into());
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy version {v} is not supported")),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .ok_or("the .npy header is truncated")?;
    let header = String::from_utf8_lossy(header);
    let shape = header
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split('(').nth(1))
        .and_then(|r| r.split(')').next())
        .ok_or("the .npy header has no shape")?;
    let mut n: u128 = 1;
    for d in shape.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let d: u128 = d.parse().map_err(|_| format!("bad .npy shape ({shape})"))?;
        n = n.saturating_mul(d);
    }
    let have = (bytes.len() - start - len) as u128;
    if n.saturating_mul(4) > have {
        return Err(format!(
            "the header declares shape ({shape}), {} bytes of float32, but the file holds {have} after the header",
            n.saturating_mul(4)
        ));
    }
    Ok(())
}

fn has_fixture(bundle: &Path, name: &str) -> bool {
    bundle
        .join("fixtures")
        .join(format!("{name}.npy"))
        .is_file()
}

/// max |a - b| / max |b|; infinite when `a` has a non-finite value or the lengths differ.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
        / scale
}

fn check(out: &[f32], want: &ArrayD<f32>, name: &str, tol: f64) -> Check {
    let want = want.iter().copied().collect::<Vec<_>>();
    let e = rel_err(out, &want);
    Check {
        output: name.into(),
        rel_err: e,
        tol,
        pass: e <= tol,
    }
}

fn run_graph(
    s: &dyn Session,
    bundle: &Path,
    inputs: &[(&str, &str)],
    outputs: &[&str],
) -> Result<Vec<Check>> {
    let arrays = inputs
        .iter()
        .map(|(_, f)| fixture(bundle, f))
        .collect::<Result<Vec<_>>>()?;
    let contiguous: Vec<Vec<f32>> = arrays.iter().map(|a| a.iter().copied().collect()).collect();
    let refs: Vec<(&str, TensorRef)> = inputs
        .iter()
        .zip(&arrays)
        .zip(&contiguous)
        .map(|(((name, _), a), d)| {
            (
                *name,
                TensorRef {
                    shape: a.shape(),
                    data: d,
                },
            )
        })
        .collect();
    let out: Vec<Tensor> = s.run(&refs)?;
    outputs
        .iter()
        .zip(&out)
        .map(|(name, t)| Ok(check(&t.data, &fixture(bundle, name)?, name, GRAPH_TOL)))
        .collect()
}

/// Verify `bundle` on `backend`. Errors when the bundle has no fixtures or is quantized (its
/// fixtures are the float model's outputs).
pub fn verify(bundle: &Bundle, backend: &dyn Backend, threads: usize) -> Result<VerifyReport> {
    let dir = bundle.dir.as_path();
    let q = &bundle.manifest.quantization;
    let float = q.encoder.scheme == "float" && q.predictor.scheme == "float";
    if !float {
        return Err(QwmError::Usage(format!(
            "{}: a quantized bundle; its fixtures are the float model's outputs, so verify the float bundle it was made from",
            dir.display()
        )));
    }
    for f in ["encoder_pixels", "predictor_visual"] {
        if !has_fixture(dir, f) {
            return Err(QwmError::bundle(
                dir.join("fixtures"),
                format!("no {f}.npy: this bundle has no parity fixtures to verify"),
            ));
        }
    }
    let opts = LoadOptions::with_threads(threads);
    let mut checks = Vec::new();
    let enc = backend.load(&bundle.encoder, &opts)?;
    checks.extend(run_graph(
        enc.as_ref(),
        dir,
        &[("pixels", "encoder_pixels"), ("proprio", "encoder_proprio")],
        &["encoder_visual", "encoder_proprio_emb"],
    )?);
    drop(enc);
    let pred = backend.load(&bundle.predictor, &opts)?;
    checks.extend(run_graph(
        pred.as_ref(),
        dir,
        &[
            ("visual", "predictor_visual"),
            ("proprio_emb", "predictor_proprio_emb"),
            ("action", "predictor_action"),
        ],
        &["predictor_next_visual", "predictor_next_proprio_emb"],
    )?);
    drop(pred);
    if has_fixture(dir, "rollout_action") {
        checks.extend(rollout(bundle, backend, threads)?);
    }
    Ok(VerifyReport {
        backend: backend.name().into(),
        checks,
    })
}

fn rows(a: &ArrayD<f32>) -> Vec<Vec<f32>> {
    a.outer_iter()
        .map(|r| r.iter().copied().collect())
        .collect()
}

fn rollout(bundle: &Bundle, backend: &dyn Backend, threads: usize) -> Result<Vec<Check>> {
    let dir = bundle.dir.as_path();
    let (v, p) = (
        fixture(dir, "rollout_visual")?,
        fixture(dir, "rollout_proprio_emb")?,
    );
    let past = fixture(dir, "rollout_past_action")?;
    let act = fixture(dir, "rollout_action")?;
    if act.ndim() != 3 || v.shape()[0] != p.shape()[0] || past.shape()[0] + 1 != v.shape()[0] {
        return Err(QwmError::bundle(
            dir.join("fixtures"),
            format!(
                "rollout fixtures disagree: visual {:?}, proprio {:?}, past actions {:?}, actions {:?}",
                v.shape(),
                p.shape(),
                past.shape(),
                act.shape()
            ),
        ));
    }
    let history: Vec<Latent> = rows(&v)
        .into_iter()
        .zip(rows(&p))
        .map(|(visual, proprio)| Latent { visual, proprio })
        .collect();
    let (batch, horizon) = (act.shape()[0], act.shape()[1]);
    let actions: Vec<f32> = act.iter().copied().collect();
    let mut wm = WorldModel::load(bundle, backend, &LoadOptions::with_threads(threads))?;
    let out = wm.rollout(&history, &rows(&past), &actions, batch, horizon)?;
    Ok(vec![
        check(
            &out.visual,
            &fixture(dir, "rollout_next_visual")?,
            "rollout_next_visual",
            ROLLOUT_TOL,
        ),
        check(
            &out.proprio,
            &fixture(dir, "rollout_next_proprio_emb")?,
            "rollout_next_proprio_emb",
            ROLLOUT_TOL,
        ),
    ])
}
