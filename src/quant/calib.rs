//! Calibration statistics of Linear inputs, collected while the float model plans.

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
}

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
}

impl Calibration {
    /// New, keeping up to `keep` sample rows per tensor.
    pub fn new(keep: usize) -> Self {
        Calibration {
            tensors: BTreeMap::new(),
            keep,
        }
    }

    /// Fold in one observed tensor with `channels` values per row.
    pub fn observe(&mut self, name: &str, data: &[f32], channels: usize) {
        if channels == 0 || data.is_empty() {
            return;
        }
        let keep = self.keep;
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
            });
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
    }
}
