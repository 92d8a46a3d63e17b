//! CEM and MPPI through the whole model stack on a mock backend with a known optimum.
//!
//! The mock "world model" is analytic: the encoder maps proprio to its embedding unchanged and
//! the predictor moves it by 0.5 x (sum of the model action's per-step halves). The objective is
//! then minimized exactly by any plan whose predicted last state equals the goal.

mod common;
use qwm::bundle::{Bundle, MappedGraph};
use qwm::engine::{Backend, LoadOptions, Session, Tensor, TensorRef};
use qwm::plan::{cem::Cem, mppi::Mppi, rng_for, Planner};
use qwm::runtime::episode::ModelRollout;
use qwm::runtime::model::{Latent, WorldModel};
use sha2::Digest;

struct Mock;
struct MockEncoder;
struct MockPredictor;

impl Session for MockEncoder {
    fn run(&self, inputs: &[(&str, TensorRef<'_>)]) -> qwm::Result<Vec<Tensor>> {
        let pr = inputs.iter().find(|(n, _)| *n == "proprio").unwrap().1;
        let b = pr.shape[0];
        Ok(vec![
            Tensor::new(vec![b, 1, 1], vec![0.0; b])?,
            Tensor::new(vec![b, 2], pr.data.to_vec())?,
        ])
    }
    fn input_names(&self) -> Vec<String> {
        vec!["pixels".into(), "proprio".into()]
    }
    fn output_names(&self) -> Vec<String> {
        vec!["visual".into(), "proprio_emb".into()]
    }
}

impl Session for MockPredictor {
    fn run(&self, inputs: &[(&str, TensorRef<'_>)]) -> qwm::Result<Vec<Tensor>> {
        let get = |k: &str| inputs.iter().find(|(n, _)| *n == k).unwrap().1;
        let (p, a) = (get("proprio_emb"), get("action"));
        let b = p.shape[0];
        let mut out = Vec::with_capacity(b * 2);
        for i in 0..b {
            // action = [dx0, dy0, dx1, dy1] (action_dim 2, frameskip 2)
            let act = &a.data[i * 4..i * 4 + 4];
            out.push(p.data[i * 2] + 0.5 * (act[0] + act[2]));
            out.push(p.data[i * 2 + 1] + 0.5 * (act[1] + act[3]));
        }
        Ok(vec![
            Tensor::new(vec![b, 1, 1], vec![0.0; b])?,
            Tensor::new(vec![b, 2], out)?,
        ])
    }
    fn input_names(&self) -> Vec<String> {
        vec!["visual".into(), "proprio_emb".into(), "action".into()]
    }
    fn output_names(&self) -> Vec<String> {
        vec!["next_visual".into(), "next_proprio_emb".into()]
    }
}

impl Backend for Mock {
    fn name(&self) -> &'static str {
        "mock"
    }
    fn load(&self, graph: &MappedGraph, _: &LoadOptions) -> qwm::Result<Box<dyn Session>> {
        Ok(if graph.spec.file == "encoder.onnx" {
            Box::new(MockEncoder)
        } else {
            Box::new(MockPredictor)
        })
    }
}

fn mock_bundle() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut files = serde_json::Map::new();
    for f in ["encoder.onnx", "predictor.onnx"] {
        let bytes = format!("mock graph {f}");
        std::fs::write(d.path().join(f), &bytes).unwrap();
        let sha = qwm::bundle::hex(&sha2::Sha256::digest(bytes.as_bytes()));
        files.insert(
            f.into(),
            serde_json::json!({"sha256": sha, "bytes": bytes.len()}),
        );
    }
    let m = serde_json::json!({
        "format_version": 1, "name": "mock", "env": "wall", "image_size": 8,
        "pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.5, 0.5, 0.5],
        "action_dim": 2, "frameskip": 2, "action_mean": [0.0, 0.0], "action_std": [1.0, 1.0],
        "proprio_dim": 2, "proprio_mean": [0.0, 0.0], "proprio_std": [1.0, 1.0],
        "num_hist": 1, "num_patches": 1, "visual_dim": 1, "proprio_emb_dim": 2,
        "objective": {"mode": "last", "alpha": 1.0},
        "graphs": {
            "encoder": {"file": "encoder.onnx", "sha256": files["encoder.onnx"]["sha256"], "bytes": files["encoder.onnx"]["bytes"],
                "inputs": [{"name": "pixels", "shape": [-1, 3, 8, 8]}, {"name": "proprio", "shape": [-1, 2]}],
                "outputs": [{"name": "visual", "shape": [-1, 1, 1]}, {"name": "proprio_emb", "shape": [-1, 2]}]},
            "predictor": {"file": "predictor.onnx", "sha256": files["predictor.onnx"]["sha256"], "bytes": files["predictor.onnx"]["bytes"],
                "inputs": [{"name": "visual", "shape": [-1, 1, 1, 1]}, {"name": "proprio_emb", "shape": [-1, 1, 2]}, {"name": "action", "shape": [-1, 1, 4]}],
                "outputs": [{"name": "next_visual", "shape": [-1, 1, 1]}, {"name": "next_proprio_emb", "shape": [-1, 2]}]}
        }
    });
    std::fs::write(
        d.path().join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    d
}

fn final_state(wm: &mut WorldModel, start: &Latent, plan: &[f32], horizon: usize) -> Vec<f32> {
    wm.rollout(std::slice::from_ref(start), &[], plan, 1, horizon)
        .unwrap()
        .proprio
}

fn check_planner(planner: &dyn Planner, tol: f32) {
    let d = mock_bundle();
    let bundle = Bundle::open(d.path()).unwrap();
    let mut wm = WorldModel::load(&bundle, &Mock, &LoadOptions::default()).unwrap();
    let frame = qwm::env::Frame {
        height: 8,
        width: 8,
        data: vec![128; 8 * 8 * 3],
    };
    let start = wm.encode(&[&frame], &[&[0.0, 0.0][..]]).unwrap().remove(0);
    let goal = wm.encode(&[&frame], &[&[1.5, -2.0][..]]).unwrap().remove(0);
    let horizon = 4;
    let outcome = {
        let mut r = ModelRollout {
            wm: &mut wm,
            history: std::slice::from_ref(&start),
            past_actions: &[],
            goal: &goal,
            chunk: 7,
        };
        planner
            .plan(&mut r, horizon, None, &mut rng_for(11, 0))
            .unwrap()
    };
    let end = final_state(&mut wm, &start, &outcome.actions, horizon);
    let err = ((end[0] - 1.5).powi(2) + (end[1] + 2.0).powi(2)).sqrt();
    assert!(
        err < tol,
        "planned end state {end:?} misses the goal by {err}"
    );
    assert!(outcome.objective < tol * tol);
}

#[test]
fn cem_reaches_the_known_optimum_through_the_model_stack() {
    check_planner(&Cem::new(300, 30, 10, 1.0).unwrap(), 0.05);
}

#[test]
fn mppi_reaches_the_known_optimum_through_the_model_stack() {
    check_planner(&Mppi::new(300, 15, 1.0, 0.1).unwrap(), 0.15);
}

#[test]
fn chunking_does_not_change_results() {
    let d = mock_bundle();
    let bundle = Bundle::open(d.path()).unwrap();
    let mut wm = WorldModel::load(&bundle, &Mock, &LoadOptions::default()).unwrap();
    let frame = qwm::env::Frame {
        height: 8,
        width: 8,
        data: vec![0; 8 * 8 * 3],
    };
    let start = wm.encode(&[&frame], &[&[0.3, 0.1][..]]).unwrap().remove(0);
    let goal = wm.encode(&[&frame], &[&[-1.0, 1.0][..]]).unwrap().remove(0);
    let cem = Cem::new(50, 5, 3, 1.0).unwrap();
    let mut plans = vec![];
    for chunk in [1, 7, 50, 1000] {
        let mut r = ModelRollout {
            wm: &mut wm,
            history: std::slice::from_ref(&start),
            past_actions: &[],
            goal: &goal,
            chunk,
        };
        plans.push(
            cem.plan(&mut r, 3, None, &mut rng_for(5, 1))
                .unwrap()
                .actions,
        );
    }
    assert!(plans.windows(2).all(|w| w[0] == w[1]));
}
