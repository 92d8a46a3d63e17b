//! Latent landscape of the encoder around a Wall task: prints the objective (encoded real
//! frames, no predictor) between the goal and a grid of dot positions.
//! `cargo run --release --example landscape -- MODEL WALL_X DOOR_Y GOAL_X GOAL_Y`
use qwm::backend::{make_backend, LoadOptions};
use qwm::bundle::Bundle;
use qwm::env::wall::{Layout, WallEnv};
use qwm::model::{BatchLatents, WorldModel};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let f = |i: usize| a[i].parse::<f64>().unwrap();
    let bundle = Bundle::open(std::path::Path::new(&a[1]))?;
    let backend = make_backend("tract")?;
    let mut wm = WorldModel::load(&bundle, backend.as_ref(), &LoadOptions::with_threads(1))?;
    let layout = Layout {
        wall_x: f(2),
        door_y: f(3),
    };
    let mut env = WallEnv::new();
    let enc = |wm: &mut WorldModel, env: &mut WallEnv, x: f64, y: f64| {
        env.set(layout, [x, y]);
        let fr = qwm::env::Env::render(env, 64);
        let p = qwm::env::Env::proprio(env);
        wm.encode(&[&fr], &[&p]).unwrap().remove(0)
    };
    let mut goal = enc(&mut wm, &mut env, f(4), f(5));
    let vis_only = std::env::var("VIS").is_ok();
    if vis_only {
        goal.proprio.iter_mut().for_each(|v| *v = 0.0);
    }
    let mut rows = vec![];
    for yi in 0..13 {
        let y = 6.0 + yi as f64 * 4.5;
        let mut row = format!("y {y:5.1} |");
        for xi in 0..13 {
            let x = 6.0 + xi as f64 * 4.5;
            if (x - layout.wall_x).abs() <= 3.5 && (y - layout.door_y).abs() > 4.0 {
                row += "   ## ";
                continue;
            }
            let z = enc(&mut wm, &mut env, x, y);
            let b = BatchLatents {
                batch: 1,
                visual: z.visual.clone(),
                proprio: if vis_only {
                    vec![0.0; z.proprio.len()]
                } else {
                    z.proprio.clone()
                },
            };
            let o = wm.objective(&b, &goal)[0];
            row += &format!("{o:6.3}");
        }
        rows.push(row);
    }
    println!(
        "x:        {}",
        (0..13)
            .map(|i| format!("{:6.1}", 6.0 + i as f64 * 4.5))
            .collect::<String>()
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
