//! DINO-WM's Wall ("DotWall") planning environment, ported faithfully.
//!
//! A dot moves on a 65 x 65 float grid: `next = pos + 2 * action`. A vertical wall of width 6
//! (faces at `wall_x - 3` and `wall_x + 3`) has a door open for `y` in `[door_y - 4, door_y + 4]`;
//! border lines sit at 4 and 60. Collisions follow the original segment-intersection rule:
//! door edges first, then the dot's cell (vertical lines before horizontal ones, the closer hit
//! wins), a constant 0.5 push-back, then clamping with a 0.3 inset. Two degenerate cases of the
//! original are handled sensibly instead of copied: a move with `dx = 0` across a border row
//! (NaN in the original) stops at the row; a move with `dx = 0` across a door edge (passes into
//! the wall in the original) is blocked like any other crossing.

use super::{render, Env, Frame, Task};
use crate::error::{QwmError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Side of the square simulation grid in pixels.
pub const GRID: usize = 65;
/// Border line nearest the origin (x and y).
pub const BORDER_LO: f64 = 4.0;
/// Border line farthest from the origin (x and y).
pub const BORDER_HI: f64 = 60.0;
/// Half of the wall width: the faces sit at `wall_x -+ 3`.
pub const WALL_HALF: f64 = 3.0;
/// Half height of the door: open for `y` in `[door_y - 4, door_y + 4]`.
pub const DOOR_HALF: f64 = 4.0;
/// Standard deviation of the rendered Gaussian dot, in pixels.
pub const DOT_STD: f64 = 1.7;
/// Displacement per unit action.
pub const STEP_SCALE: f64 = 2.0;
/// Success when the distance to the goal is strictly below this.
pub const SUCCESS_DISTANCE: f64 = 4.5;
/// Range of wall positions sampled per episode (inclusive).
pub const WALL_X_RANGE: (i64, i64) = (20, 44);
/// Range of door centres sampled per episode (inclusive).
pub const DOOR_Y_RANGE: (i64, i64) = (10, 54);

const PUSH: f64 = 0.5;
const INSET: f64 = 0.3;

/// The per-episode layout: where the wall and its door are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    /// Column of the wall centre.
    pub wall_x: f64,
    /// Row of the door centre.
    pub door_y: f64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            wall_x: 32.0,
            door_y: 30.0,
        }
    }
}

/// `torch.sign`: zero maps to zero (unlike `f64::signum`).
fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Whether the segment p -> q touches or crosses the line `coord = line` (axis 0: x, 1: y).
fn crosses(p: [f64; 2], q: [f64; 2], axis: usize, line: f64) -> bool {
    sign(p[axis] - line) * sign(q[axis] - line) <= 0.0
}

/// The other coordinate where p -> q meets `coord[axis] = line` (p's own if parallel).
fn cross_at(p: [f64; 2], q: [f64; 2], axis: usize, line: f64) -> f64 {
    let other = 1 - axis;
    let d = q[axis] - p[axis];
    if d == 0.0 {
        p[other]
    } else {
        p[other] + (line - p[axis]) * (q[other] - p[other]) / d
    }
}

fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Resolve a move from `p` to the unobstructed target `q`: `None` when nothing is hit.
pub fn collide(p: [f64; 2], q: [f64; 2], layout: Layout) -> Option<[f64; 2]> {
    let (left_face, right_face) = (layout.wall_x - WALL_HALF, layout.wall_x + WALL_HALF);
    let (door_lo, door_hi) = (layout.door_y - DOOR_HALF, layout.door_y + DOOR_HALF);
    let dy = q[1] - p[1];

    // (1) Leaving the door gap through its lower or upper edge inside the wall's span.
    if dy > 0.0 && q[1] > door_hi && p[1] < door_hi {
        let xc = cross_at(p, q, 1, door_hi);
        if left_face <= xc && xc <= right_face {
            return Some([xc + PUSH, door_hi - PUSH]);
        }
    }
    if dy < 0.0 && q[1] < door_lo && p[1] > door_lo {
        let xc = cross_at(p, q, 1, door_lo);
        if left_face <= xc && xc <= right_face {
            return Some([xc + PUSH, door_lo + PUSH]);
        }
    }

    // (2) The dot's cell, decided by the wall centre.
    let (left, left_door, right, right_door) = if layout.wall_x > p[0] {
        (BORDER_LO, false, left_face, true)
    } else {
        (right_face, true, BORDER_HI, false)
    };
    let (top, bottom) = (BORDER_LO, BORDER_HI);
    let vertical = |line: f64, door: bool| -> Option<[f64; 2]> {
        if !crosses(p, q, 0, line) {
            return None;
        }
        let y = cross_at(p, q, 0, line);
        if door && door_lo <= y && y <= door_hi {
            None
        } else {
            Some([line, y])
        }
    };
    let horizontal = |line: f64| -> Option<[f64; 2]> {
        crosses(p, q, 1, line).then(|| [cross_at(p, q, 1, line), line])
    };
    let v = vertical(left, left_door).or_else(|| vertical(right, right_door));
    let h = horizontal(top).or_else(|| horizontal(bottom));
    let mut r = match (v, h) {
        (None, None) => return None,
        (Some(v), Some(h)) if dist(p, v) < dist(p, h) => {
            [v[0] + PUSH * sign(p[0] - v[0]), v[1] + PUSH]
        }
        (Some(v), None) => [v[0] + PUSH * sign(p[0] - v[0]), v[1] + PUSH],
        (_, Some(h)) => [h[0] + PUSH, h[1] + PUSH * sign(p[1] - h[1])],
    };

    // (3) Clamp into the cell; a coordinate left on a bound moves slightly inside.
    r[0] = r[0].clamp(left, right);
    r[1] = r[1].clamp(top, bottom);
    if r[0] <= left {
        r[0] = left + INSET;
    }
    if r[0] >= right {
        r[0] = right - INSET;
    }
    if r[1] <= top {
        r[1] = top + INSET;
    }
    if r[1] >= bottom {
        r[1] = bottom - INSET;
    }
    Some(r)
}

/// One step of the Wall dynamics from `p` under `action`.
pub fn next_position(p: [f64; 2], action: [f64; 2], layout: Layout) -> [f64; 2] {
    let q = [p[0] + STEP_SCALE * action[0], p[1] + STEP_SCALE * action[1]];
    collide(p, q, layout).unwrap_or(q)
}

/// Whether grid pixel (row, col) is wall or border (drawn black).
pub fn is_wall_pixel(layout: Layout, row: usize, col: usize) -> bool {
    let (r, c) = (row as f64, col as f64);
    let inside = |v: f64| (BORDER_LO..=BORDER_HI).contains(&v);
    let border = inside(r)
        && inside(c)
        && (r == BORDER_LO || r == BORDER_HI || c == BORDER_LO || c == BORDER_HI);
    let wall = (layout.wall_x - WALL_HALF..=layout.wall_x + WALL_HALF).contains(&c)
        && inside(r)
        && !(layout.door_y - DOOR_HALF..=layout.door_y + DOOR_HALF).contains(&r);
    border || wall
}

/// Render a dot at `pos` in `layout` on the native 65 x 65 grid as float RGB in 0..255 (HWC).
pub fn render_native(layout: Layout, pos: [f64; 2]) -> Vec<f32> {
    let mut dot = vec![0f64; GRID * GRID];
    let mut max = 0f64;
    for row in 0..GRID {
        for col in 0..GRID {
            let d2 = (col as f64 - pos[0]).powi(2) + (row as f64 - pos[1]).powi(2);
            let v = (-d2 / (2.0 * DOT_STD * DOT_STD)).exp();
            dot[row * GRID + col] = v;
            max = max.max(v);
        }
    }
    let mut img = vec![255f32; GRID * GRID * 3];
    for row in 0..GRID {
        for col in 0..GRID {
            let i = (row * GRID + col) * 3;
            let outside = !(BORDER_LO..=BORDER_HI).contains(&(row as f64))
                || !(BORDER_LO..=BORDER_HI).contains(&(col as f64));
            if outside {
                continue; // white margin
            }
            if is_wall_pixel(layout, row, col) {
                img[i..i + 3].fill(0.0);
                continue;
            }
            let g = if max > 0.0 {
                dot[row * GRID + col] / max
            } else {
                0.0
            };
            let gb = 255.0 - (255.0 * g).trunc();
            img[i + 1] = gb as f32;
            img[i + 2] = gb as f32;
        }
    }
    img
}

/// The Wall environment.
#[derive(Clone, Debug)]
pub struct WallEnv {
    layout: Layout,
    pos: [f64; 2],
}

impl Default for WallEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl WallEnv {
    /// A Wall environment in the default layout with the dot at the left cell's centre.
    pub fn new() -> Self {
        WallEnv {
            layout: Layout::default(),
            pos: [16.0, 30.0],
        }
    }

    /// The current layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Set layout and position directly (tests, dataset generation).
    pub fn set(&mut self, layout: Layout, pos: [f64; 2]) {
        self.layout = layout;
        self.pos = pos;
    }

    /// Current position with full precision.
    pub fn position(&self) -> [f64; 2] {
        self.pos
    }

    /// Sample a per-episode layout.
    pub fn sample_layout(rng: &mut impl Rng) -> Layout {
        let wall_x = rng.random_range(WALL_X_RANGE.0..=WALL_X_RANGE.1) as f64;
        let door_y = rng.random_range(DOOR_Y_RANGE.0..=DOOR_Y_RANGE.1) as f64;
        Layout { wall_x, door_y }
    }
}

fn parse_layout(task: &Task) -> Result<Layout> {
    match task.layout.as_slice() {
        [wx, dy] if wx.is_finite() && dy.is_finite() => Ok(Layout {
            wall_x: *wx as f64,
            door_y: *dy as f64,
        }),
        other => Err(QwmError::Usage(format!(
            "wall: layout must be [wall_x, door_y], got {other:?}"
        ))),
    }
}

fn parse_xy(v: &[f32], what: &str) -> Result<[f64; 2]> {
    match v {
        [x, y] if x.is_finite() && y.is_finite() => Ok([*x as f64, *y as f64]),
        other => Err(QwmError::Usage(format!(
            "wall: {what} must be two finite numbers, got {other:?}"
        ))),
    }
}

impl Env for WallEnv {
    fn name(&self) -> &'static str {
        "wall"
    }
    fn action_dim(&self) -> usize {
        2
    }
    fn proprio_dim(&self) -> usize {
        2
    }

    /// Layout, then start/goal on opposite sides: four uniform draws (start_x, goal_x, start_y,
    /// goal_y) relative to the actual wall, and a swap of the x values with probability 0.5.
    fn sample_task(&self, seed: u64) -> Task {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layout = Self::sample_layout(&mut rng);
        let margin = 3.4; // 2 x dot std, as the reference
        let lo = BORDER_LO + margin;
        let hi = BORDER_HI - margin;
        let left_hi = layout.wall_x - WALL_HALF - margin;
        let right_lo = layout.wall_x + WALL_HALF + margin;
        let mut sx = rng.random_range(lo..left_hi);
        let mut gx = rng.random_range(right_lo..hi);
        let sy = rng.random_range(lo..hi);
        let gy = rng.random_range(lo..hi);
        if rng.random_bool(0.5) {
            std::mem::swap(&mut sx, &mut gx);
        }
        Task {
            layout: vec![layout.wall_x as f32, layout.door_y as f32],
            start: vec![sx as f32, sy as f32],
            goal: vec![gx as f32, gy as f32],
        }
    }

    fn reset_to(&mut self, task: &Task) -> Result<()> {
        self.layout = parse_layout(task)?;
        self.pos = parse_xy(&task.start, "start state")?;
        Ok(())
    }

    fn step(&mut self, action: &[f32]) -> Result<()> {
        let a = parse_xy(action, "action")?;
        self.pos = next_position(self.pos, a, self.layout);
        Ok(())
    }

    fn state(&self) -> Vec<f32> {
        vec![self.pos[0] as f32, self.pos[1] as f32]
    }

    fn proprio_of(&self, state: &[f32]) -> Vec<f32> {
        state[..2].to_vec()
    }

    fn render_state(&self, state: &[f32], size: usize) -> Frame {
        let img = render_native(self.layout, [state[0] as f64, state[1] as f64]);
        let resized = render::resize_bilinear_aa(&img, GRID, GRID, 3, size, size);
        Frame {
            height: size,
            width: size,
            data: render::to_u8(&resized),
        }
    }

    fn distance(&self, goal: &[f32]) -> f32 {
        dist(self.pos, [goal[0] as f64, goal[1] as f64]) as f32
    }

    fn is_success(&self, goal: &[f32]) -> bool {
        (self.distance(goal) as f64) < SUCCESS_DISTANCE
    }
}

/// Scripted data-collection policy for Wall: a mix of smooth random walks, goal-directed runs
/// through the door, and straight pushes toward targets across the wall (so that the data covers
/// passing the door and being stopped by the wall, the two outcomes a planner must tell apart).
#[derive(Clone, Debug)]
pub struct WallDataPolicy {
    directed: bool,
    push: bool,
    waypoints: Vec<[f64; 2]>,
    speed: f64,
    prev: [f64; 2],
    speed_max: Option<f64>,
}

/// Largest per-axis action the scripted policy emits (the reference's max step norm).
pub const MAX_ACTION: f64 = 2.45;

impl WallDataPolicy {
    /// Start a new episode's policy; also samples the episode's start state. `speed_max` raises
    /// the top speed of pushes and door runs (per-axis action, at most [`MAX_ACTION`]); `None`
    /// keeps the original ranges (pushes 0.4..1.6, door runs 0.3..1.4) and reproduces the data
    /// the first models were trained on draw for draw.
    pub fn start(rng: &mut impl Rng, speed_max: Option<f64>) -> (Self, Layout, [f64; 2]) {
        let layout = WallEnv::sample_layout(rng);
        let left_side = rng.random_bool(0.5);
        let y = rng.random_range(BORDER_LO + 0.5..BORDER_HI - 0.5);
        let x = if rng.random_bool(0.1) {
            // Start in the door gap.
            let y = rng.random_range(layout.door_y - DOOR_HALF..layout.door_y + DOOR_HALF);
            let x = rng.random_range(layout.wall_x - WALL_HALF..layout.wall_x + WALL_HALF);
            let mut p = Self::fresh(rng, layout, x, speed_max);
            p.0.waypoints.clear();
            return (p.0, layout, [x, y]);
        } else if left_side {
            rng.random_range(BORDER_LO + 0.5..layout.wall_x - WALL_HALF - 0.5)
        } else {
            rng.random_range(layout.wall_x + WALL_HALF + 0.5..BORDER_HI - 0.5)
        };
        let (p, _) = Self::fresh(rng, layout, x, speed_max);
        (p, layout, [x, y])
    }

    fn fresh(rng: &mut impl Rng, layout: Layout, x: f64, speed_max: Option<f64>) -> (Self, ()) {
        let u: f64 = rng.random();
        let (directed, push) = (u < 0.45, (0.45..0.75).contains(&u));
        let mut me = WallDataPolicy {
            directed,
            push,
            waypoints: vec![],
            speed: 1.0,
            prev: [0.0, 0.0],
            speed_max,
        };
        if directed {
            me.plan_crossing(rng, layout, x);
        }
        if push {
            me.plan_push(rng, layout, x);
        }
        (me, ())
    }

    /// A target across the wall, approached in a straight line (the wall stops the dot unless
    /// the line happens to pass the door).
    fn plan_push(&mut self, rng: &mut impl Rng, layout: Layout, x: f64) {
        let from_left = x < layout.wall_x;
        let target_x = if from_left {
            rng.random_range(layout.wall_x + WALL_HALF + 1.0..BORDER_HI - 1.0)
        } else {
            rng.random_range(BORDER_LO + 1.0..layout.wall_x - WALL_HALF - 1.0)
        };
        let target_y = rng.random_range(BORDER_LO + 1.0..BORDER_HI - 1.0);
        self.waypoints = vec![[target_x, target_y]];
        self.speed = rng.random_range(0.4..self.speed_max.unwrap_or(1.6));
    }

    fn plan_crossing(&mut self, rng: &mut impl Rng, layout: Layout, x: f64) {
        let from_left = x < layout.wall_x;
        let s = if from_left { 1.0 } else { -1.0 };
        let door_y = layout.door_y + rng.random_range(-2.5..2.5);
        let target_x = if from_left {
            rng.random_range(layout.wall_x + WALL_HALF + 1.0..BORDER_HI - 1.0)
        } else {
            rng.random_range(BORDER_LO + 1.0..layout.wall_x - WALL_HALF - 1.0)
        };
        let target_y = rng.random_range(BORDER_LO + 1.0..BORDER_HI - 1.0);
        // Waypoints: in front of the door, through it, then a target on the other side (stored reversed).
        self.waypoints = vec![
            [target_x, target_y],
            [layout.wall_x + s * (WALL_HALF + 3.0), door_y],
            [layout.wall_x - s * (WALL_HALF + 3.0), door_y],
        ];
        self.speed = rng.random_range(0.3..self.speed_max.unwrap_or(1.4));
    }

    /// A step of the policy's speed toward the current waypoint, with Gaussian noise.
    fn toward_waypoint<R: Rng>(
        &self,
        rng: &mut R,
        pos: [f64; 2],
        normal: &dyn Fn(&mut dyn rand::RngCore, f64) -> f64,
    ) -> [f64; 2] {
        let w = *self.waypoints.last().expect("a waypoint is planned");
        let (dx, dy) = (w[0] - pos[0], w[1] - pos[1]);
        let n = (dx * dx + dy * dy).sqrt().max(1e-6);
        let step = self.speed.min(n / STEP_SCALE);
        [
            dx / n * step + normal(rng, 0.35),
            dy / n * step + normal(rng, 0.35),
        ]
    }

    /// The next action for the dot at `pos`.
    pub fn act(&mut self, rng: &mut impl Rng, layout: Layout, pos: [f64; 2]) -> [f64; 2] {
        let normal = |rng: &mut dyn rand::RngCore, std: f64| -> f64 {
            use rand_distr::Distribution;
            rand_distr::Normal::new(0.0, std).unwrap().sample(rng)
        };
        let a = if self.directed {
            while let Some(w) = self.waypoints.last() {
                if dist(*w, pos) < 2.0 {
                    self.waypoints.pop();
                } else {
                    break;
                }
            }
            if self.waypoints.is_empty() {
                self.plan_crossing(rng, layout, pos[0]);
            }
            self.toward_waypoint(rng, pos, &normal)
        } else if self.push {
            if self.waypoints.last().is_none_or(|w| dist(*w, pos) < 2.0) {
                self.plan_push(rng, layout, pos[0]);
            }
            self.toward_waypoint(rng, pos, &normal)
        } else {
            [
                0.7 * self.prev[0] + normal(rng, 0.7),
                0.7 * self.prev[1] + normal(rng, 0.7),
            ]
        };
        let a = [
            a[0].clamp(-MAX_ACTION, MAX_ACTION),
            a[1].clamp(-MAX_ACTION, MAX_ACTION),
        ];
        self.prev = a;
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Layout = Layout {
        wall_x: 32.0,
        door_y: 30.0,
    };

    #[test]
    fn free_move_is_pos_plus_two_action() {
        assert_eq!(next_position([10.0, 10.0], [1.0, -0.5], L), [12.0, 9.0]);
    }

    #[test]
    fn wall_blocks_from_left_with_push_back() {
        // From x=25 moving right by 8 crosses the left face (29) at y = 10 (outside the door).
        let r = next_position([25.0, 10.0], [4.0, 0.0], L);
        assert_eq!(r, [28.5, 10.5]);
    }

    #[test]
    fn wall_blocks_from_right_with_push_back() {
        let r = next_position([40.0, 50.0], [-4.0, 0.0], L);
        // Crosses the right face (35) at y=50; push +0.5 to the right, sideways +0.5.
        assert_eq!(r, [35.5, 50.5]);
    }

    #[test]
    fn door_lets_the_dot_through() {
        let r = next_position([26.0, 30.0], [5.0, 0.0], L);
        assert_eq!(r, [36.0, 30.0]);
        let back = next_position(r, [-5.0, 0.0], L);
        assert_eq!(back, [26.0, 30.0]);
    }

    #[test]
    fn door_edges_block_inside_the_gap() {
        // Inside the gap (x in [29, 35]), moving down across y = 34: stopped at the edge.
        let r = next_position([32.0, 33.0], [0.5, 1.0], L);
        assert!(
            (r[0] - 33.0).abs() < 1e-12 && (r[1] - 33.5).abs() < 1e-12,
            "{r:?}"
        );
        // Moving up across y = 26.
        let r = next_position([30.0, 27.0], [0.0, -1.0], L);
        assert_eq!(r, [30.5, 26.5]);
    }

    #[test]
    fn borders_clamp_with_inset() {
        // Moving left across the border at x = 4.
        let r = next_position([6.0, 20.0], [-3.0, 0.0], L);
        assert_eq!(r, [4.5, 20.5]);
        // Moving up across y = 4 with dx = 0: no NaN (degenerate case of the original).
        let r = next_position([10.0, 5.0], [0.0, -2.0], L);
        assert_eq!(r, [10.5, 4.5]);
        // Far out of range: the hit is pushed, then clamped into the cell with the inset.
        let r = next_position([5.0, 5.0], [-10.0, -10.0], L);
        assert!(
            r.iter().all(|v| v.is_finite() && *v > 4.0 && *v < 60.0),
            "{r:?}"
        );
        let r = next_position([59.0, 59.0], [10.0, 0.2], L);
        assert!(
            (r[0] - 59.5).abs() < 1e-12 && (r[1] - 59.52).abs() < 1e-9,
            "{r:?}"
        );
        // Near a corner the horizontal hit wins, its sideways push lands on the wall face,
        // and the clamp moves it 0.3 inside.
        let r = next_position([28.8, 5.0], [0.2, -2.0], L);
        assert!(
            (r[0] - 28.7).abs() < 1e-12 && (r[1] - 4.5).abs() < 1e-12,
            "{r:?}"
        );
    }

    #[test]
    fn never_leaves_the_box_or_enters_the_wall() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let layout = WallEnv::sample_layout(&mut rng);
            let mut p = [10.0, 30.0];
            if layout.wall_x - WALL_HALF <= 10.0 {
                continue;
            }
            for _ in 0..200 {
                let a = [rng.random_range(-2.5..2.5), rng.random_range(-2.5..2.5)];
                p = next_position(p, a, layout);
                assert!(
                    p.iter()
                        .all(|v| v.is_finite() && *v >= BORDER_LO && *v <= BORDER_HI),
                    "{p:?}"
                );
                let in_wall_x =
                    p[0] > layout.wall_x - WALL_HALF && p[0] < layout.wall_x + WALL_HALF;
                let in_door = p[1] >= layout.door_y - DOOR_HALF - 0.5
                    && p[1] <= layout.door_y + DOOR_HALF + 0.5;
                assert!(
                    !in_wall_x || in_door,
                    "dot inside the wall body at {p:?} in {layout:?}"
                );
            }
        }
    }

    #[test]
    fn tasks_are_deterministic_and_on_opposite_sides() {
        let env = WallEnv::new();
        for seed in 0..100u64 {
            let t = env.sample_task(99 * seed + 1);
            assert_eq!(t, env.sample_task(99 * seed + 1));
            let wx = t.layout[0];
            assert!((t.start[0] < wx) != (t.goal[0] < wx), "{t:?}");
            for v in t.start.iter().chain(&t.goal) {
                assert!(*v >= 7.4 && *v < 56.6);
            }
        }
        assert_ne!(env.sample_task(1), env.sample_task(100));
    }

    #[test]
    fn brightest_dot_pixel_sits_at_the_state() {
        for &(x, y) in &[(10.2f64, 20.7f64), (45.6, 50.4), (30.0, 30.0)] {
            let img = render_native(L, [x, y]);
            // Strongest red = smallest green among free pixels.
            let (mut best, mut at) = (f32::MAX, (0, 0));
            for row in 0..GRID {
                for col in 0..GRID {
                    let i = (row * GRID + col) * 3;
                    if img[i] == 255.0 && img[i + 1] < best {
                        best = img[i + 1];
                        at = (row, col);
                    }
                }
            }
            assert_eq!(best, 0.0, "nearest pixel must be pure red");
            assert_eq!(at, (y.round() as usize, x.round() as usize));
        }
    }

    #[test]
    fn render_draws_wall_door_border_and_margin() {
        let img = render_native(L, [16.0, 16.0]);
        let px = |r: usize, c: usize| &img[(r * GRID + c) * 3..(r * GRID + c) * 3 + 3];
        assert_eq!(px(10, 32), &[0.0, 0.0, 0.0]); // wall body
        assert_eq!(px(30, 32), &[255.0, 255.0, 255.0]); // door
        assert_eq!(px(4, 20), &[0.0, 0.0, 0.0]); // border line
        assert_eq!(px(2, 20), &[255.0, 255.0, 255.0]); // margin
        let env = WallEnv::new();
        let f = env.render_state(&[16.0, 16.0], 64);
        assert_eq!((f.height, f.width, f.data.len()), (64, 64, 64 * 64 * 3));
    }

    #[test]
    fn success_threshold_is_strict() {
        let mut env = WallEnv::new();
        env.set(L, [10.0, 10.0]);
        assert!(env.is_success(&[14.4, 10.0]));
        assert!(!env.is_success(&[14.5, 10.0]));
    }
}
