//! Seeded random inputs of a graph's declared shapes (benchmarks, per-operator profiles).

use crate::bundle::MappedGraph;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Seeded standard-normal inputs of a graph's shapes at `batch`.
pub fn random_inputs(
    graph: &MappedGraph,
    batch: usize,
    seed: u64,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    graph
        .spec
        .inputs
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t
                .shape
                .iter()
                .map(|&d| if d < 0 { batch } else { d as usize })
                .collect();
            let n = shape.iter().product();
            let data = (0..n)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect::<Vec<f32>>();
            (t.name.clone(), shape, data)
        })
        .collect()
}
