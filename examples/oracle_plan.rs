//! CEM on the true Wall dynamics with hand-made objectives: how much of planning failure is the
//! objective's landscape rather than the model? `oracle_plan MODE [C] [MAX_ITER]`
//! MODE: euclid (squared distance, like the proprio term) | wall (plus C * side * |y - door_y|)
use qwm::env::wall::{next_position, Layout, WallEnv};
use qwm::env::Env;
use qwm::plan::{cem::Cem, rng_for, Planner, Rollout};

struct Oracle {
    layout: Layout,
    pos: [f64; 2],
    goal: [f64; 2],
    mode: String,
    c: f64,
}

const STD: [f32; 2] = [0.84, 0.75];
const MEAN: [f32; 2] = [-0.025, -0.058];

impl Oracle {
    fn feat(&self, p: [f64; 2]) -> Vec<f64> {
        let mut f = vec![p[0], p[1]];
        if self.mode == "wall" {
            let side = if p[0] < self.layout.wall_x { -1.0 } else { 1.0 };
            f.push(self.c * side * (p[1] - self.layout.door_y).abs());
        }
        f
    }
}

impl Rollout for Oracle {
    fn action_dim(&self) -> usize {
        10
    }
    fn action_bounds(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        let lo = (0..10)
            .map(|i| (-2.45 - MEAN[i % 2]) / STD[i % 2])
            .collect();
        let hi = (0..10).map(|i| (2.45 - MEAN[i % 2]) / STD[i % 2]).collect();
        Some((lo, hi))
    }
    fn evaluate(&mut self, a: &[f32], batch: usize, horizon: usize) -> qwm::Result<Vec<f32>> {
        let fg = self.feat(self.goal);
        Ok((0..batch)
            .map(|c| {
                let mut p = self.pos;
                for k in 0..horizon * 5 {
                    let i = c * horizon * 10 + k * 2;
                    let act = [
                        (a[i] * STD[0] + MEAN[0]) as f64,
                        (a[i + 1] * STD[1] + MEAN[1]) as f64,
                    ];
                    p = next_position(p, act, self.layout);
                }
                let f = self.feat(p);
                f.iter().zip(&fg).map(|(x, y)| (x - y).powi(2)).sum::<f64>() as f32
            })
            .collect())
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mode = a[1].clone();
    let c: f64 = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(1.0);
    let max_iter: usize = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(10);
    let cem = Cem::new(300, 30, 10, 1.0).unwrap();
    let mut env = WallEnv::new();
    let mut ok = 0;
    let mut fails = vec![];
    for ep in 0..50u64 {
        let task = env.sample_task(99 * ep + 1);
        env.reset_to(&task).unwrap();
        let layout = env.layout();
        let goal = [task.goal[0] as f64, task.goal[1] as f64];
        let mut rng = rng_for(0, ep);
        let mut warm: Option<Vec<f32>> = None;
        let mut success = false;
        for _ in 0..max_iter {
            let mut o = Oracle {
                layout,
                pos: env.position(),
                goal,
                mode: mode.clone(),
                c,
            };
            let out = cem.plan(&mut o, 5, warm.as_deref(), &mut rng).unwrap();
            for k in 0..25 {
                let i = k * 2;
                env.step(&[
                    out.actions[i] * STD[0] + MEAN[0],
                    out.actions[i + 1] * STD[1] + MEAN[1],
                ])
                .unwrap();
            }
            if env.is_success(&task.goal) {
                success = true;
                break;
            }
            warm = Some(vec![0.0; 50]);
        }
        if success {
            ok += 1;
        } else {
            fails.push(ep);
        }
    }
    println!("{mode} c={c} max_iter={max_iter}: {ok}/50 success; failed {fails:?}");
}
