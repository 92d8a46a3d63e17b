//! Calibration statistics of Linear inputs, collected while the float model plans.

use super::gptq::Hessian;
use std::collections::BTreeMap;

/// Running statistics of one activation tensor (rows = all leading axes, channels = last axis).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TensorStats {
    /// Smallest value seen.
    pub min: f64,
    /// Largest value seen.
    pub max: f64,
    /// Per-channel max |x|.
    #[serde(skip)]
    pub chan_absmax: Vec<f64>,
    /// Per-channel minimum.
    #[serde(skip)]
    pub chan_min: Vec<f64>,
    /// Per-channel maximum.
    #[serde(skip)]
    pub chan_max: Vec<f64>,
    /// Per-channel sum |x|.
    #[serde(skip)]
    pub chan_abssum: Vec<f64>,
    /// Rows seen.
    pub rows: u64,
    /// A deterministic subsample of rows (for AWQ's search), at most `keep` of them.
    #[serde(skip)]
    pub sample: Vec<Vec<f32>>,
    /// `sum x x^T` over every [`HESSIAN_STRIDE`]-th row (GPTQ's Hessian), when collected.
    #[serde(skip)]
    pub hessian: Option<Hessian>,
}

/// Rows between two rows folded into a Hessian: calibration sees hundreds of thousands of rows
/// per Linear input, a k x k rank-one update each; one row in 8, spread over the whole run,
/// keeps the cost a few seconds and still gives far more rows than input channels.
pub const HESSIAN_STRIDE: u64 = 8;

impl TensorStats {
    /// Per-channel mean |x|.
    pub fn chan_absmean(&self) -> Vec<f64> {
        self.chan_abssum
            .iter()
            .map(|s| s / self.rows.max(1) as f64)
            .collect()
    }
}

/// Statistics of every tapped tensor, by name.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// Per tensor name.
    pub tensors: BTreeMap<String, TensorStats>,
    /// Rows kept per tensor for sample-based searches.
    pub keep: usize,
    /// Whether to collect each tensor's Hessian (for GPTQ).
    pub hessians: bool,
}

impl Calibration {
    /// New, keeping up to `keep` sample rows per tensor.
    pub fn new(keep: usize) -> Self {
        Calibration {
            tensors: BTreeMap::new(),
            keep,
            hessians: false,
        }
    }

    /// New, also collecting every tensor's Hessian `sum x x^T` (GPTQ).
    pub fn with_hessians(keep: usize) -> Self {
        Calibration {
            hessians: true,
            ..Calibration::new(keep)
        }
    }

    /// The Hessian of a tensor, symmetric (None when not collected or never observed).
    pub fn hessian(&self, name: &str) -> Option<Hessian> {
        let mut h = self.tensors.get(name)?.hessian.clone()?;
        h.symmetrize();
        Some(h)
    }

    /// Fold in one observed tensor with `channels` values per row.
    pub fn observe(&mut self, name: &str, data: &[f32], channels: usize) {
        if channels == 0 || data.is_empty() {
            return;
        }
        let (keep, hessians) = (self.keep, self.hessians);
        let st = self
            .tensors
            .entry(name.to_string())
            .or_insert_with(|| TensorStats {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                chan_absmax: vec![0.0; channels],
                chan_min: vec![f64::INFINITY; channels],
                chan_max: vec![f64::NEG_INFINITY; channels],
                chan_abssum: vec![0.0; channels],
                rows: 0,
                sample: vec![],
                hessian: hessians.then(|| Hessian {
                    k: channels,
                    xtx: vec![0.0; channels * channels],
                    rows: 0,
                }),
            });
        if st.chan_absmax.len() != channels {
            // A tensor seen with another width (never in a valid graph): keep the first.
            return;
        }
        let rows = data.len() / channels;
        for r in 0..rows {
            let row = &data[r * channels..(r + 1) * channels];
            for (c, &v) in row.iter().enumerate() {
                let v = v as f64;
                if !v.is_finite() {
                    continue;
                }
                st.min = st.min.min(v);
                st.max = st.max.max(v);
                st.chan_absmax[c] = st.chan_absmax[c].max(v.abs());
                st.chan_min[c] = st.chan_min[c].min(v);
                st.chan_max[c] = st.chan_max[c].max(v);
                st.chan_abssum[c] += v.abs();
            }
            // Keep every 97th row until full: deterministic and spread over the run.
            if st.sample.len() < keep && (st.rows + r as u64).is_multiple_of(97) {
                st.sample.push(row.to_vec());
            }
            if let Some(h) = &mut st.hessian {
                if (st.rows + r as u64).is_multiple_of(HESSIAN_STRIDE)
                    && row.iter().all(|v| v.is_finite())
                {
                    h.add_row(row);
                }
            }
        }
        st.rows += rows as u64;
    }
}

impl crate::runtime::model::Tap for Calibration {
    fn observe(&mut self, name: &str, data: &[f32], channels: usize) {
        Calibration::observe(self, name, data, channels)
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_accumulate() {
        let mut c = Calibration::new(4);
        c.observe("x", &[1.0, -2.0, 3.0, 0.5], 2);
        c.observe("x", &[-4.0, 1.0], 2);
        let s = &c.tensors["x"];
        assert_eq!((s.min, s.max, s.rows), (-4.0, 3.0, 3));
        assert_eq!(s.chan_absmax, vec![4.0, 2.0]);
        assert_eq!(s.chan_absmean(), vec![8.0 / 3.0, 3.5 / 3.0]);
        assert_eq!(s.sample.len(), 1);
        assert!(s.hessian.is_none());
    }

    #[test]
    fn hessians_fold_every_eighth_row() {
        let mut c = Calibration::with_hessians(4);
        let rows: Vec<f32> = (0..17 * 2).map(|i| i as f32 * 0.5 - 3.0).collect();
        c.observe("x", &rows[..10], 2);
        c.observe("x", &rows[10..], 2);
        let h = c.hessian("x").unwrap();
        // Rows 0, 8 and 16.
        let picked: Vec<f32> = [0, 8, 16]
            .iter()
            .flat_map(|r| rows[r * 2..r * 2 + 2].to_vec())
            .collect();
        assert_eq!(h, Hessian::from_rows(&picked, 2));
        assert_eq!(h.rows, 3);
        assert!(c.hessian("y").is_none());
    }
}
