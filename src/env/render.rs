//! Image resampling shared by environments: antialiased bilinear resize on float images.

/// Per-output-pixel taps of a 1-D antialiased triangle (bilinear) filter.
///
/// Follows the convention of PyTorch's `interpolate(mode="bilinear", antialias=True,
/// align_corners=False)` and PIL: when downscaling the triangle is widened by the scale
/// factor so every input pixel contributes; weights are normalized to sum to one.
fn taps(in_len: usize, out_len: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_len as f64 / out_len as f64;
    let support = if scale > 1.0 { scale } else { 1.0 };
    let inv = if scale > 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_len)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(in_len);
            let mut w: Vec<f64> = (lo..hi)
                .map(|j| {
                    let x = (j as f64 - center + 0.5) * inv;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let s: f64 = w.iter().sum();
            if s > 0.0 {
                w.iter_mut().for_each(|v| *v /= s);
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Resize a float HWC image with `c` channels to `out_h` x `out_w` (antialiased bilinear).
pub fn resize_bilinear_aa(
    src: &[f32],
    h: usize,
    w: usize,
    c: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        h * w * c,
        "resize: source length does not match its shape"
    );
    if h == out_h && w == out_w {
        return src.to_vec();
    }
    let tx = taps(w, out_w);
    let ty = taps(h, out_h);
    // Horizontal pass: h x out_w x c.
    let mut tmp = vec![0f32; h * out_w * c];
    for y in 0..h {
        for (ox, (lo, ws)) in tx.iter().enumerate() {
            for ch in 0..c {
                let mut acc = 0f32;
                for (k, wt) in ws.iter().enumerate() {
                    acc += wt * src[(y * w + lo + k) * c + ch];
                }
                tmp[(y * out_w + ox) * c + ch] = acc;
            }
        }
    }
    // Vertical pass.
    let mut out = vec![0f32; out_h * out_w * c];
    for (oy, (lo, ws)) in ty.iter().enumerate() {
        for x in 0..out_w {
            for ch in 0..c {
                let mut acc = 0f32;
                for (k, wt) in ws.iter().enumerate() {
                    acc += wt * tmp[((lo + k) * out_w + x) * c + ch];
                }
                out[(oy * out_w + x) * c + ch] = acc;
            }
        }
    }
    out
}

/// Round a float image in 0..255 to bytes (what a camera delivers).
pub fn to_u8(img: &[f32]) -> Vec<u8> {
    img.iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_same_size() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear_aa(&src, 2, 2, 3, 2, 2), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![7.0f32; 65 * 65 * 3];
        let out = resize_bilinear_aa(&src, 65, 65, 3, 64, 64);
        assert!(out.iter().all(|v| (v - 7.0).abs() < 1e-4));
    }

    #[test]
    fn weights_are_normalized_and_local() {
        for (lo, ws) in taps(65, 64) {
            let s: f32 = ws.iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
            assert!(ws.len() <= 4 && lo < 65);
        }
        // Halving: output pixel 0 covers input pixels 0..=2 with a triangle centred at 1.0.
        let t = taps(4, 2);
        assert_eq!(t[0].0, 0);
        let w = &t[0].1;
        // Triangle weights 0.75, 0.75, 0.25 (pixel -1 is outside), normalized: 3/7, 3/7, 1/7.
        assert!((w[0] - 3.0 / 7.0).abs() < 1e-6);
        assert!((w[1] - 3.0 / 7.0).abs() < 1e-6);
        assert!((w[2] - 1.0 / 7.0).abs() < 1e-6);
    }
}
