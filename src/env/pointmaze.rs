//! PointMaze: D4RL's maze2d U-maze point mass, as DINO-WM plans in it.
//!
//! Facts from D4RL's `pointmaze/maze_model.py` (the model DINO-WM's PointMaze wraps):
//! - the maze string `#####\#GOO#\###O#\#OOO#\#####`; line index `w` and column `h` of a `#` put a
//!   1 x 1 wall box (half-size 0.5) at world `(w + 1, h + 1)`;
//! - the particle body sits at world `(1.2, 1.2)` with two slide joints, so the state `qpos` is the
//!   world position minus 1.2 (free cell `(w, h)` spans `qpos` `[w - 0.7, w + 0.3]` per axis: the
//!   reference's reset points `(w, h)` are 0.2 off the cell centres, kept here); a sphere of radius
//!   0.1 with density 1000 (mass 4/3 pi 0.1^3 x 1000 = 4.19 kg); joint damping 1;
//! - motors with gear 100 and controls clipped to [-1, 1]; timestep 0.01, frame_skip 5 (one env step
//!   = 5 physics steps); the velocity is clipped to +-5 before each env step; Euler integration,
//!   implicit in the damping: `v' = (m v + h F) / (m + h b)`, `q' = q + h v'`.
//! - State `[x, y, vx, vy]`; success: `|goal_xy - xy| < 0.5`.
//!
//! Not MuJoCo: contacts with the walls are resolved as hard, inelastic circle-vs-box contacts
//! (the centre pushed out to 0.1 from the box, the velocity into the box removed) where MuJoCo's are
//! soft; the rendering is an orthographic top-down view of the maze (walls in D4RL's wall colour,
//! the floor in its ground colour, the particle as its visible site: a disc of radius 0.2) rather
//! than MuJoCo's perspective camera. qwm's PointMaze models are trained on exactly this environment.

use super::{render, Env, Frame, Task};
use crate::error::{QwmError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// D4RL's U-maze, lines separated by `\`.
pub const U_MAZE: &str = "#####\\#GOO#\\###O#\\#OOO#\\#####";
/// World offset of the particle body (state = world - offset).
pub const BODY_OFFSET: f64 = 1.2;
/// Particle radius.
pub const RADIUS: f64 = 0.1;
/// Particle mass (sphere of radius 0.1, density 1000).
pub const MASS: f64 = 4.0 / 3.0 * std::f64::consts::PI * 0.001 * 1000.0;
/// Joint damping.
pub const DAMPING: f64 = 1.0;
/// Motor gear.
pub const GEAR: f64 = 100.0;
/// Physics timestep.
pub const DT: f64 = 0.01;
/// Physics steps per env step.
pub const FRAME_SKIP: usize = 5;
/// Velocity bound applied before each env step.
pub const MAX_VELOCITY: f64 = 5.0;
/// Success threshold on the position distance.
pub const SUCCESS_DISTANCE: f64 = 0.5;
/// Native render resolution: pixels per world unit.
const PX_PER_UNIT: usize = 16;

/// The maze as a grid of walls, `[w][h]` as in D4RL.
#[derive(Clone, Debug, PartialEq)]
pub struct Maze {
    walls: Vec<Vec<bool>>,
}

impl Maze {
    /// Parse a D4RL maze string (`#` wall; `O`, `G`, space: free; lines separated by `\`).
    pub fn parse(s: &str) -> Result<Maze> {
        let walls: Vec<Vec<bool>> = s
            .split('\\')
            .map(|l| l.chars().map(|c| c == '#').collect())
            .collect();
        let h = walls.first().map(|r| r.len()).unwrap_or(0);
        if h == 0 || walls.iter().any(|r| r.len() != h) {
            return Err(QwmError::Usage(format!(
                "pointmaze: maze '{s}' must have lines of equal length"
            )));
        }
        Ok(Maze { walls })
    }

    /// Grid size `(W, H)`.
    pub fn size(&self) -> (usize, usize) {
        (self.walls.len(), self.walls[0].len())
    }

    /// Whether cell `(w, h)` is a wall (outside the grid counts as wall).
    pub fn is_wall(&self, w: isize, h: isize) -> bool {
        let (nw, nh) = self.size();
        w < 0 || h < 0 || w as usize >= nw || h as usize >= nh || self.walls[w as usize][h as usize]
    }

    /// Free cells in `(w, h)` order.
    pub fn free_cells(&self) -> Vec<(usize, usize)> {
        let (nw, nh) = self.size();
        (0..nw)
            .flat_map(|w| (0..nh).map(move |h| (w, h)))
            .filter(|&(w, h)| !self.walls[w][h])
            .collect()
    }

    /// The free cell containing a state position, if any.
    pub fn cell_of(&self, p: [f64; 2]) -> Option<(usize, usize)> {
        let w = (p[0] + BODY_OFFSET - 0.5).floor() as isize;
        let h = (p[1] + BODY_OFFSET - 0.5).floor() as isize;
        (!self.is_wall(w, h)).then_some((w as usize, h as usize))
    }

    /// Centre of free cell `(w, h)` in state coordinates.
    pub fn cell_center(w: usize, h: usize) -> [f64; 2] {
        [w as f64 + 1.0 - BODY_OFFSET, h as f64 + 1.0 - BODY_OFFSET]
    }

    /// Shortest path of free cells from `a` to `b` (inclusive), 4-connected, by BFS.
    pub fn path(&self, a: (usize, usize), b: (usize, usize)) -> Vec<(usize, usize)> {
        let (nw, nh) = self.size();
        let mut prev = vec![vec![None; nh]; nw];
        let mut queue = std::collections::VecDeque::from([a]);
        prev[a.0][a.1] = Some(a);
        while let Some(c) = queue.pop_front() {
            if c == b {
                break;
            }
            for (dw, dh) in [(1isize, 0isize), (-1, 0), (0, 1), (0, -1)] {
                let (w, h) = (c.0 as isize + dw, c.1 as isize + dh);
                if !self.is_wall(w, h) && prev[w as usize][h as usize].is_none() {
                    prev[w as usize][h as usize] = Some(c);
                    queue.push_back((w as usize, h as usize));
                }
            }
        }
        let mut out = vec![b];
        let mut c = b;
        while c != a {
            match prev[c.0][c.1] {
                Some(p) => {
                    out.push(p);
                    c = p;
                }
                None => return vec![a],
            }
        }
        out.reverse();
        out
    }

    /// Push a circle of radius [`RADIUS`] at `p` (state coordinates) out of every wall box it
    /// overlaps; removes the velocity component into each box it touches.
    fn resolve(&self, p: &mut [f64; 2], v: &mut [f64; 2]) {
        for _ in 0..3 {
            let mut moved = false;
            let cw = (p[0] + BODY_OFFSET - 0.5).floor() as isize;
            let ch = (p[1] + BODY_OFFSET - 0.5).floor() as isize;
            for w in cw - 1..=cw + 1 {
                for h in ch - 1..=ch + 1 {
                    if !self.is_wall(w, h) {
                        continue;
                    }
                    // Box [w + 0.5, w + 1.5] x [h + 0.5, h + 1.5] in world coordinates.
                    let (x0, x1) = (w as f64 + 0.5, w as f64 + 1.5);
                    let (y0, y1) = (h as f64 + 0.5, h as f64 + 1.5);
                    let (wx, wy) = (p[0] + BODY_OFFSET, p[1] + BODY_OFFSET);
                    let (qx, qy) = (wx.clamp(x0, x1), wy.clamp(y0, y1));
                    let (dx, dy) = (wx - qx, wy - qy);
                    let d = (dx * dx + dy * dy).sqrt();
                    if d >= RADIUS {
                        continue;
                    }
                    // Outside the box: out along the normal from its nearest point. Inside (a
                    // step longer than the radius cannot happen at |v| <= 5: 0.05 per physics
                    // step, but be safe): out through the nearest side.
                    let (nx, ny, nwx, nwy) = if d > 1e-12 {
                        let (nx, ny) = (dx / d, dy / d);
                        (nx, ny, qx + nx * RADIUS, qy + ny * RADIUS)
                    } else {
                        let sides = [
                            (wx - x0, -1.0, 0.0, x0 - RADIUS, wy),
                            (x1 - wx, 1.0, 0.0, x1 + RADIUS, wy),
                            (wy - y0, 0.0, -1.0, wx, y0 - RADIUS),
                            (y1 - wy, 0.0, 1.0, wx, y1 + RADIUS),
                        ];
                        let m = sides
                            .iter()
                            .min_by(|a, b| a.0.total_cmp(&b.0))
                            .expect("four sides");
                        (m.1, m.2, m.3, m.4)
                    };
                    p[0] = nwx - BODY_OFFSET;
                    p[1] = nwy - BODY_OFFSET;
                    let vn = v[0] * nx + v[1] * ny;
                    if vn < 0.0 {
                        v[0] -= vn * nx;
                        v[1] -= vn * ny;
                    }
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
    }
}

/// The PointMaze environment (U-maze).
#[derive(Clone, Debug)]
pub struct PointMazeEnv {
    maze: Maze,
    pos: [f64; 2],
    vel: [f64; 2],
}

impl Default for PointMazeEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl PointMazeEnv {
    /// The U-maze at its first free cell, at rest.
    pub fn new() -> Self {
        let maze = Maze::parse(U_MAZE).expect("the built-in maze parses");
        let (w, h) = maze.free_cells()[0];
        PointMazeEnv {
            pos: Maze::cell_center(w, h),
            vel: [0.0; 2],
            maze,
        }
    }

    /// The maze.
    pub fn maze(&self) -> &Maze {
        &self.maze
    }

    /// Position and velocity.
    pub fn position(&self) -> ([f64; 2], [f64; 2]) {
        (self.pos, self.vel)
    }

    /// A uniformly random position inside a random free cell, clear of the walls.
    pub fn random_free_position(&self, rng: &mut impl Rng) -> [f64; 2] {
        let cells = self.maze.free_cells();
        let (w, h) = cells[rng.random_range(0..cells.len())];
        let c = Maze::cell_center(w, h);
        let m = 0.5 - RADIUS;
        [
            c[0] + rng.random_range(-m..m),
            c[1] + rng.random_range(-m..m),
        ]
    }

    /// Set the state directly.
    pub fn set(&mut self, pos: [f64; 2], vel: [f64; 2]) {
        self.pos = pos;
        self.vel = vel;
    }
}

fn parse_state(v: &[f32], what: &str) -> Result<([f64; 2], [f64; 2])> {
    let ok = |x: &f32| x.is_finite();
    match v {
        [x, y] if ok(x) && ok(y) => Ok(([*x as f64, *y as f64], [0.0; 2])),
        [x, y, vx, vy] if [x, y, vx, vy].iter().all(|v| ok(v)) => {
            Ok(([*x as f64, *y as f64], [*vx as f64, *vy as f64]))
        }
        other => Err(QwmError::Usage(format!(
            "pointmaze: {what} must be [x, y] or [x, y, vx, vy] finite numbers, got {other:?}"
        ))),
    }
}

/// Top-down render of a state at native resolution (`16 px` per unit, the whole maze), f32 RGB in
/// 0..255, HWC; rows follow the second state axis, columns the first.
pub fn render_native(maze: &Maze, pos: [f64; 2]) -> (Vec<f32>, usize, usize) {
    let (nw, nh) = maze.size();
    let (cols, rows) = (nw * PX_PER_UNIT, nh * PX_PER_UNIT);
    const FLOOR: [f32; 3] = [51.0, 76.5, 102.0]; // D4RL ground rgb1 (0.2, 0.3, 0.4)
    const WALL: [f32; 3] = [178.5, 127.5, 76.5]; // D4RL wall material (0.7, 0.5, 0.3)
    const AGENT: [f32; 3] = [76.5, 153.0, 76.5]; // the particle site (0.3, 0.6, 0.3)
    let mut img = vec![0f32; rows * cols * 3];
    let (wx, wy) = (pos[0] + BODY_OFFSET, pos[1] + BODY_OFFSET);
    let site = 0.2;
    let sub = 4; // 4 x 4 samples per pixel for the disc's edge
    for r in 0..rows {
        for c in 0..cols {
            let (cw, ch) = ((c / PX_PER_UNIT) as isize, (r / PX_PER_UNIT) as isize);
            let base = if maze.is_wall(cw, ch) { WALL } else { FLOOR };
            let mut cover = 0usize;
            // Only pixels near the disc need the samples.
            let (px, py) = (
                0.5 + (c as f64 + 0.5) / PX_PER_UNIT as f64,
                0.5 + (r as f64 + 0.5) / PX_PER_UNIT as f64,
            );
            let near = (px - wx).abs() <= site + 1.0 / PX_PER_UNIT as f64
                && (py - wy).abs() <= site + 1.0 / PX_PER_UNIT as f64;
            for sy in 0..if near { sub } else { 0 } {
                for sx in 0..sub {
                    // World coordinates of the sample (the grid starts at world 0.5).
                    let x = 0.5 + (c as f64 + (sx as f64 + 0.5) / sub as f64) / PX_PER_UNIT as f64;
                    let y = 0.5 + (r as f64 + (sy as f64 + 0.5) / sub as f64) / PX_PER_UNIT as f64;
                    if (x - wx).powi(2) + (y - wy).powi(2) <= site * site {
                        cover += 1;
                    }
                }
            }
            let a = cover as f32 / (sub * sub) as f32;
            let o = (r * cols + c) * 3;
            for k in 0..3 {
                img[o + k] = base[k] * (1.0 - a) + AGENT[k] * a;
            }
        }
    }
    (img, rows, cols)
}

impl Env for PointMazeEnv {
    fn name(&self) -> &'static str {
        "pointmaze"
    }
    fn action_dim(&self) -> usize {
        2
    }
    fn proprio_dim(&self) -> usize {
        4
    }

    /// Start and goal: uniform positions in random free cells (clear of the walls), at least one
    /// unit apart; start at rest. No layout (the maze is fixed).
    fn sample_task(&self, seed: u64) -> Task {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        loop {
            let s = self.random_free_position(&mut rng);
            let g = self.random_free_position(&mut rng);
            if ((s[0] - g[0]).powi(2) + (s[1] - g[1]).powi(2)).sqrt() >= 1.0 {
                return Task {
                    layout: vec![],
                    start: vec![s[0] as f32, s[1] as f32, 0.0, 0.0],
                    goal: vec![g[0] as f32, g[1] as f32, 0.0, 0.0],
                };
            }
        }
    }

    fn reset_to(&mut self, task: &Task) -> Result<()> {
        if !task.layout.is_empty() {
            return Err(QwmError::Usage(format!(
                "pointmaze: the U-maze has no layout parameters, got {:?}",
                task.layout
            )));
        }
        let (p, v) = parse_state(&task.start, "start state")?;
        if self.maze.cell_of(p).is_none() {
            return Err(QwmError::Usage(format!(
                "pointmaze: start {p:?} is inside a wall"
            )));
        }
        self.pos = p;
        self.vel = v;
        Ok(())
    }

    fn step(&mut self, action: &[f32]) -> Result<()> {
        let a = match action {
            [x, y] if x.is_finite() && y.is_finite() => {
                [(*x as f64).clamp(-1.0, 1.0), (*y as f64).clamp(-1.0, 1.0)]
            }
            other => {
                return Err(QwmError::Usage(format!(
                    "pointmaze: action must be two finite numbers, got {other:?}"
                )))
            }
        };
        for v in &mut self.vel {
            *v = v.clamp(-MAX_VELOCITY, MAX_VELOCITY);
        }
        for _ in 0..FRAME_SKIP {
            for ((v, p), a) in self.vel.iter_mut().zip(&mut self.pos).zip(a) {
                *v = (MASS * *v + DT * GEAR * a) / (MASS + DT * DAMPING);
                *p += DT * *v;
            }
            self.maze.resolve(&mut self.pos, &mut self.vel);
        }
        Ok(())
    }

    fn state(&self) -> Vec<f32> {
        vec![
            self.pos[0] as f32,
            self.pos[1] as f32,
            self.vel[0] as f32,
            self.vel[1] as f32,
        ]
    }

    fn proprio_of(&self, state: &[f32]) -> Vec<f32> {
        let mut p = state[..state.len().min(4)].to_vec();
        p.resize(4, 0.0);
        p
    }

    fn render_state(&self, state: &[f32], size: usize) -> Frame {
        let (img, rows, cols) = render_native(&self.maze, [state[0] as f64, state[1] as f64]);
        let resized = render::resize_bilinear_aa(&img, rows, cols, 3, size, size);
        Frame {
            height: size,
            width: size,
            data: render::to_u8(&resized),
        }
    }

    fn distance(&self, goal: &[f32]) -> f32 {
        ((self.pos[0] - goal[0] as f64).powi(2) + (self.pos[1] - goal[1] as f64).powi(2)).sqrt()
            as f32
    }

    fn is_success(&self, goal: &[f32]) -> bool {
        (self.distance(goal) as f64) < SUCCESS_DISTANCE
    }
}

/// Scripted data-collection policy: noisy goal-directed runs along the maze's corridors (BFS over
/// free cells to a random target, a PD controller toward each cell centre, Gaussian action noise),
/// and a share of smooth random walks (so the data shows the particle meeting walls).
#[derive(Clone, Debug)]
pub struct PointMazeDataPolicy {
    waypoints: Vec<[f64; 2]>,
    random_walk: bool,
    prev: [f64; 2],
    noise: f64,
}

impl PointMazeDataPolicy {
    /// A new episode's policy.
    pub fn new(rng: &mut impl Rng) -> Self {
        PointMazeDataPolicy {
            waypoints: vec![],
            random_walk: rng.random_bool(0.2),
            prev: [0.0; 2],
            noise: rng.random_range(0.1..0.5),
        }
    }

    /// The next action (each component in [-1, 1]).
    pub fn act(&mut self, rng: &mut impl Rng, env: &PointMazeEnv) -> [f64; 2] {
        let (p, v) = env.position();
        let gauss = |rng: &mut dyn rand::RngCore| -> f64 {
            let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random_range(0.0..1.0));
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        if self.random_walk {
            for k in 0..2 {
                self.prev[k] = (0.8 * self.prev[k] + 0.6 * gauss(rng)).clamp(-1.0, 1.0);
            }
            return self.prev;
        }
        if self
            .waypoints
            .first()
            .is_some_and(|w| ((w[0] - p[0]).powi(2) + (w[1] - p[1]).powi(2)).sqrt() < 0.3)
        {
            self.waypoints.remove(0);
        }
        if self.waypoints.is_empty() {
            let maze = env.maze();
            let cells = maze.free_cells();
            let target = cells[rng.random_range(0..cells.len())];
            let here = maze.cell_of(p).unwrap_or(cells[0]);
            self.waypoints = maze
                .path(here, target)
                .into_iter()
                .skip(1)
                .map(|(w, h)| Maze::cell_center(w, h))
                .collect();
            // A final point anywhere in the target cell.
            let c = Maze::cell_center(target.0, target.1);
            let m = 0.5 - RADIUS;
            self.waypoints.push([
                c[0] + rng.random_range(-m..m),
                c[1] + rng.random_range(-m..m),
            ]);
        }
        let w = self.waypoints[0];
        let mut a = [0.0; 2];
        for k in 0..2 {
            a[k] = (2.0 * (w[k] - p[k]) - 0.5 * v[k] + self.noise * gauss(rng)).clamp(-1.0, 1.0);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_u_maze_has_seven_free_cells_in_a_u() {
        let m = Maze::parse(U_MAZE).unwrap();
        assert_eq!(
            m.free_cells(),
            vec![(1, 1), (1, 2), (1, 3), (2, 3), (3, 1), (3, 2), (3, 3)]
        );
        // From one arm's end to the other's: all the way round the U.
        assert_eq!(m.path((1, 1), (3, 1)).len(), 7);
        assert!(Maze::parse("##\\#").is_err());
    }

    #[test]
    fn free_flight_follows_the_reference_dynamics() {
        // One env step from rest at a cell centre with full control along x: 5 Euler steps.
        let mut env = PointMazeEnv::new();
        env.set(Maze::cell_center(1, 2), [0.0, 0.0]);
        let (p0, _) = env.position();
        env.step(&[1.0, 0.0]).unwrap();
        let (mut x, mut v) = (p0[0], 0.0);
        for _ in 0..5 {
            v = (MASS * v + DT * GEAR) / (MASS + DT * DAMPING);
            x += DT * v;
        }
        let (p, vel) = env.position();
        assert!(
            (p[0] - x).abs() < 1e-12 && (vel[0] - v).abs() < 1e-12,
            "{p:?} {vel:?}"
        );
        assert_eq!(p[1], p0[1]);
        // Controls are clipped to [-1, 1] and velocities to +-5 before each step.
        let mut a = env.clone();
        let mut b = env.clone();
        a.step(&[7.0, -3.0]).unwrap();
        b.step(&[1.0, -1.0]).unwrap();
        assert_eq!(a.state(), b.state());
        env.set(Maze::cell_center(1, 2), [40.0, 0.0]);
        let mut c = env.clone();
        c.set(Maze::cell_center(1, 2), [MAX_VELOCITY, 0.0]);
        env.step(&[0.0, 0.0]).unwrap();
        c.step(&[0.0, 0.0]).unwrap();
        assert_eq!(env.state(), c.state());
    }

    #[test]
    fn walls_stop_the_particle() {
        let mut env = PointMazeEnv::new();
        // Cell (2, 3) is the bottom of the U; pushing toward -h runs into the wall cell (2, 2).
        env.set(Maze::cell_center(2, 3), [0.0, 0.0]);
        for _ in 0..40 {
            env.step(&[0.0, -1.0]).unwrap();
        }
        let (p, v) = env.position();
        // The wall (2, 2) ends at world h + 1.5 = 3.5, i.e. state 2.3; the centre stays 0.1 off.
        assert!((p[1] - (2.3 + RADIUS)).abs() < 1e-9, "{p:?}");
        assert!(v[1].abs() < 1e-9);
        // Never inside a wall, whatever the actions.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..2000 {
            let a = [
                rng.random_range(-1.0..1.0f32),
                rng.random_range(-1.0..1.0f32),
            ];
            env.step(&a).unwrap();
            let (p, _) = env.position();
            assert!(env.maze().cell_of(p).is_some(), "{p:?}");
        }
    }

    #[test]
    fn tasks_are_free_distinct_and_deterministic() {
        let env = PointMazeEnv::new();
        for seed in 0..200 {
            let t = env.sample_task(seed);
            assert_eq!(t, env.sample_task(seed));
            let (s, g) = (&t.start, &t.goal);
            assert!(env.maze().cell_of([s[0] as f64, s[1] as f64]).is_some());
            assert!(env.maze().cell_of([g[0] as f64, g[1] as f64]).is_some());
            assert!(((s[0] - g[0]).powi(2) + (s[1] - g[1]).powi(2)).sqrt() >= 1.0);
        }
        let mut env = PointMazeEnv::new();
        let t = env.sample_task(1);
        env.reset_to(&t).unwrap();
        assert!(!env.is_success(&t.goal));
        let mut g = t.clone();
        g.goal = t.start.clone();
        assert!(env.is_success(&g.goal));
        assert!(env
            .reset_to(&Task {
                layout: vec![1.0],
                ..t.clone()
            })
            .is_err());
        assert!(env.step(&[f32::NAN, 0.0]).is_err());
    }

    #[test]
    fn render_shows_the_particle_where_it_is() {
        let mut env = PointMazeEnv::new();
        env.set(Maze::cell_center(1, 1), [0.0; 2]);
        let a = env.render(64);
        env.set(Maze::cell_center(3, 3), [0.0; 2]);
        let b = env.render(64);
        assert_eq!(a.data.len(), 64 * 64 * 3);
        assert_ne!(a, b);
        // The particle's green is present; the walls' orange too.
        let green = |f: &Frame| f.data.chunks(3).any(|p| p[1] > 120 && p[0] < 110);
        assert!(green(&a) && green(&b));
        assert!(a.data.chunks(3).any(|p| p[0] > 170 && p[2] < 90));
    }

    #[test]
    fn the_data_policy_travels_the_maze() {
        let mut env = PointMazeEnv::new();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut visited = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let mut pol = PointMazeDataPolicy::new(&mut rng);
            pol.random_walk = false;
            let p = env.random_free_position(&mut rng);
            env.set(p, [0.0; 2]);
            for _ in 0..100 {
                let a = pol.act(&mut rng, &env);
                env.step(&[a[0] as f32, a[1] as f32]).unwrap();
                visited.insert(env.maze().cell_of(env.position().0).unwrap());
            }
        }
        assert_eq!(visited.len(), 7, "{visited:?}");
    }
}
