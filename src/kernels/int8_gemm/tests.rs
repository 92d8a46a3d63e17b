//! The kernel's test suite, run against every variant this CPU has: each checked against a
//! float64 reference and against the portable kernel.

use super::*;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
}

/// Both kernels on every path the rows, columns and blocks can take, as one output.
fn run(a: &[f32], m: usize, w: &PackedWeights, act: ActQuant) -> Vec<Vec<f32>> {
    let mut outs = vec![];
    for isa in crate::kernels::isa::Isa::available() {
        let mut out = vec![f32::NAN; m * w.n()];
        matmul(a, m, w, act, &mut out, isa);
        outs.push(out);
    }
    outs
}

fn check(got: &[f32], want: &[f64], what: &str) {
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: output {i} is {g}");
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * scale,
            "{what}: output {i} = {g}, float64 reference {w} (scale {scale})"
        );
    }
}

/// Static uint8 activations times per-column int8 weights against a float64 reference of
/// ONNX's QuantizeLinear -> MatMulInteger -> Cast -> Mul, on both kernels, for row counts
/// that leave partial tiles, K not a multiple of 4 and N not a multiple of the panel.
#[test]
fn static_int8_matches_a_float64_reference() {
    let mut seed = 7;
    for (m, k, n) in [
        (1usize, 64usize, 32usize),
        (7, 40, 45),
        (13, 403, 70),
        (400, 96, 33),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| 3.0 * lcg(&mut seed)).collect();
        let w: Vec<i8> = (0..k * n).map(|_| (lcg(&mut seed) * 127.0) as i8).collect();
        let scales: Vec<f32> = (0..n)
            .map(|_| 0.001 + 0.01 * lcg(&mut seed).abs())
            .collect();
        let (a_scale, zero) = (0.021f32, 131u8);
        let packed = PackedWeights::from_i8(k, n, &w, &scales);
        let mut want = vec![0f64; m * n];
        for r in 0..m {
            let mut q = vec![0u8; k];
            quantize_static(&a[r * k..(r + 1) * k], &mut q, a_scale, zero);
            for c in 0..n {
                let acc: i64 = (0..k)
                    .map(|kk| (q[kk] as i64 - zero as i64) * w[kk * n + c] as i64)
                    .sum();
                want[r * n + c] = acc as f64 * scales[c] as f64;
            }
        }
        let outs = run(
            &a,
            m,
            &packed,
            ActQuant::Static {
                scale: a_scale,
                zero,
            },
        );
        for out in &outs {
            check(out, &want, &format!("static m {m} k {k} n {n}"));
        }
        for (o, isa) in outs
            .iter()
            .zip(crate::kernels::isa::Isa::available())
            .skip(1)
        {
            assert_eq!(
                o, &outs[0],
                "{isa:?} must give the portable kernel's numbers"
            );
        }
    }
}

/// 4-bit symmetric block-wise weights with int8 activations per row and block against a
/// float64 reference of that semantics, including a partial last block; and within 2% of
/// the float product (what the quantized activations cost).
#[test]
fn per_block_int4_matches_a_float64_reference() {
    let mut seed = 11;
    for (m, k, n, bs) in [
        (5usize, 64usize, 32usize, 32usize),
        (8, 50, 17, 32),
        (13, 384, 96, 128),
        (3, 40, 70, 16),
    ] {
        let nb = k.div_ceil(bs);
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let codes: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                (0..k)
                    .map(|_| ((lcg(&mut seed) + 1.0) * 7.99) as u8)
                    .collect()
            })
            .collect();
        let scales: Vec<f32> = (0..n * nb)
            .map(|_| 0.01 + 0.02 * lcg(&mut seed).abs())
            .collect();
        let mut packed_codes = vec![0u8; n * nb * bs / 2];
        for (c, row) in codes.iter().enumerate() {
            for (kk, code) in row.iter().enumerate() {
                let byte = (c * nb + kk / bs) * bs / 2 + (kk % bs) / 2;
                packed_codes[byte] |= code << (4 * (kk % 2));
            }
        }
        let packed = PackedWeights::from_nbits4(k, n, bs, &packed_codes, &scales);
        let mut want = vec![0f64; m * n];
        let mut float = vec![0f64; m * n];
        for r in 0..m {
            let x = &a[r * k..(r + 1) * k];
            for b in 0..nb {
                let (lo, hi) = (b * bs, ((b + 1) * bs).min(k));
                let sc = x[lo..hi].iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for c in 0..n {
                    let ws = scales[c * nb + b] as f64;
                    let mut acc = 0i64;
                    for kk in lo..hi {
                        let q = (x[kk] / sc).round_ties_even().clamp(-127.0, 127.0) as i64;
                        let wv = codes[c][kk] as i64 - 8;
                        acc += q * wv;
                        float[r * n + c] += x[kk] as f64 * wv as f64 * ws;
                    }
                    want[r * n + c] += sc as f64 * ws * acc as f64;
                }
            }
        }
        let outs = run(&a, m, &packed, ActQuant::PerBlock);
        for out in &outs {
            check(
                out,
                &want,
                &format!("per-block m {m} k {k} n {n} block {bs}"),
            );
            let fs = float.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            let worst = out
                .iter()
                .zip(&float)
                .fold(0f64, |m, (g, f)| m.max((*g as f64 - f).abs()));
            assert!(worst <= 0.02 * fs, "per-block vs float: {worst} of {fs}");
        }
        for (o, isa) in outs
            .iter()
            .zip(crate::kernels::isa::Isa::available())
            .skip(1)
        {
            assert_eq!(
                o, &outs[0],
                "{isa:?} must give the portable kernel's numbers"
            );
        }
    }
}

/// A column range starting on a panel boundary computes exactly those columns of the whole
/// product, for both storages; other ranges are refused.
#[test]
fn column_slices_are_the_same_columns() {
    let (m, k, n) = (7usize, 40usize, 90usize);
    let mut seed = 3;
    let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
    let w: Vec<i8> = (0..k * n).map(|_| (lcg(&mut seed) * 100.0) as i8).collect();
    let sc: Vec<f32> = (0..n).map(|i| 0.01 + i as f32 * 1e-4).collect();
    let codes: Vec<u8> = (0..n * 3 * 8).map(|i| (i * 37 % 256) as u8).collect();
    let sc4: Vec<f32> = (0..n * 3).map(|i| 0.02 + i as f32 * 1e-4).collect();
    for (w, act) in [
        (
            PackedWeights::from_i8(k, n, &w, &sc),
            ActQuant::Static {
                scale: 0.01,
                zero: 120,
            },
        ),
        (
            PackedWeights::from_nbits4(k, n, 16, &codes, &sc4),
            ActQuant::PerBlock,
        ),
    ] {
        let isa = crate::kernels::isa::Isa::Portable;
        let mut whole = vec![0f32; m * n];
        matmul(&a, m, &w, act, &mut whole, isa);
        for cols in [0..32usize, 32..90, 64..70] {
            let part = w.columns(cols.clone()).unwrap();
            let mut out = vec![0f32; m * cols.len()];
            matmul(&a, m, &part, act, &mut out, isa);
            for r in 0..m {
                assert_eq!(
                    out[r * cols.len()..(r + 1) * cols.len()],
                    whole[r * n + cols.start..r * n + cols.end]
                );
            }
        }
        assert!(w.columns(10..40).is_none() && w.columns(64..91).is_none());
    }
}

/// A row of zeros (scale 0) gives zeros, not NaN.
#[test]
fn zero_rows_stay_zero() {
    let packed = PackedWeights::from_nbits4(32, 3, 32, &[0x3Fu8; 48], &[0.5; 3]);
    for out in run(&[0.0; 64], 2, &packed, ActQuant::PerBlock) {
        assert!(out.iter().all(|v| *v == 0.0), "{out:?}");
    }
}

/// `cargo test --release --lib int8_gemm_speed -- --ignored --nocapture`: multiply-adds per
/// second of both activation modes against ndarray's f32 product, on the full-size predictor's
/// shapes (the numbers go to the bench notes, not to an assertion).
#[test]
#[ignore]
fn int8_gemm_speed() {
    for (m, k, n) in [
        (3136usize, 404usize, 3072usize),
        (3136, 1024, 404),
        (3136, 404, 2048),
        (3136, 2048, 404),
        (196, 384, 1536),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 97) as f32 / 48.5 - 1.0)
            .collect();
        let w: Vec<i8> = (0..k * n).map(|i| ((i * 31) % 255) as i8).collect();
        let codes: Vec<u8> = (0..k.div_ceil(32) * 16 * n)
            .map(|i| (i * 37 % 256) as u8)
            .collect();
        let i8w = PackedWeights::from_i8(k, n, &w, &vec![0.01; n]);
        let nb = PackedWeights::from_nbits4(k, n, 32, &codes, &vec![0.01; n * k.div_ceil(32)]);
        let mut out = vec![0f32; m * n];
        let time = |f: &mut dyn FnMut()| {
            f();
            let t = std::time::Instant::now();
            for _ in 0..5 {
                f();
            }
            (m * n * k) as f64 * 5.0 / t.elapsed().as_secs_f64() / 1e9
        };
        let af = ndarray::Array2::from_shape_vec((m, k), a.clone()).unwrap();
        let wf = ndarray::Array2::from_shape_fn((k, n), |(i, j)| w[i * n + j] as f32);
        let mut cf = ndarray::Array2::<f32>::zeros((m, n));
        let fl = time(&mut || ndarray::linalg::general_mat_mul(1.0, &af, &wf, 0.0, &mut cf));
        for isa in crate::kernels::isa::Isa::available() {
            let st = time(&mut || {
                matmul(
                    &a,
                    m,
                    &i8w,
                    ActQuant::Static {
                        scale: 0.02,
                        zero: 128,
                    },
                    &mut out,
                    isa,
                )
            });
            let pb = time(&mut || matmul(&a, m, &nb, ActQuant::PerBlock, &mut out, isa));
            println!(
                "m {m} k {k} n {n} {}: static int8 {st:.1} GMAC/s, per-block int4 {pb:.1}, f32 (ndarray) {fl:.1}",
                isa.name()
            );
        }
    }
}

/// The largest products every 4-bit path meets (weights -8, activations at -127 in every one of
/// 512 rows of K, blocks of 256): kernels that sum products in narrow lanes must stay exact.
#[test]
fn extreme_4bit_products_stay_exact() {
    let (m, k, n, bs) = (7usize, 512usize, 40usize, 256usize);
    let codes = vec![0u8; n * (k / bs) * bs / 2]; // every code 0: weight -8
    let scales = vec![0.5f32; n * (k / bs)];
    let packed = PackedWeights::from_nbits4(k, n, bs, &codes, &scales);
    for sign in [-1.0f32, 1.0] {
        let a = vec![sign; m * k];
        // Per block: scale 1/127, q = sign * 127; each output sums (k / bs) blocks of
        // bs * (q * -8) * (1/127) * 0.5.
        let want = vec![(k as f64) * (sign as f64 * 127.0) * -8.0 * 0.5 / 127.0; m * n];
        for out in run(&a, m, &packed, ActQuant::PerBlock) {
            check(&out, &want, &format!("extreme 4-bit, sign {sign}"));
        }
    }
}
