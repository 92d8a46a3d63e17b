//! PushT's rendering (tiny-skia): the goal T, the block, the agent and the walls, as the
//! reference draws them (colours in the parent module's docs).

use super::{Frame, AGENT_RADIUS, GOAL_POSE, T_BOXES, WALL_SEGMENTS, WORLD};

/// Corners of the T's boxes in world pixels at a pose.
pub fn t_polygons(x: f32, y: f32, angle: f32) -> [[(f32, f32); 4]; 2] {
    let (s, c) = angle.sin_cos();
    T_BOXES.map(|b| {
        [(b[0], b[1]), (b[2], b[1]), (b[2], b[3]), (b[0], b[3])]
            .map(|(px, py)| (x + c * px - s * py, y + s * px + c * py))
    })
}

/// Render a state at `size` x `size` (the 512-pixel world scaled, antialiased).
pub fn render_pusht(s: &[f32], size: usize) -> Frame {
    use tiny_skia::{Color, FillRule, Paint, PathBuilder, Pixmap, Stroke, Transform};
    let mut pm = Pixmap::new(size as u32, size as u32).expect("size >= 1");
    pm.fill(Color::WHITE);
    let k = size as f32 / WORLD;
    let tf = Transform::from_scale(k, k);
    let paint = |r: u8, g: u8, b: u8| {
        let mut p = Paint::default();
        p.set_color_rgba8(r, g, b, 255);
        p.anti_alias = true;
        p
    };
    let poly = |pts: &[(f32, f32); 4]| {
        let mut pb = PathBuilder::new();
        pb.move_to(pts[0].0, pts[0].1);
        for p in &pts[1..] {
            pb.line_to(p.0, p.1);
        }
        pb.close();
        pb.finish().expect("a quad")
    };
    // Goal T (LightGreen), under everything.
    for q in t_polygons(GOAL_POSE[0], GOAL_POSE[1], GOAL_POSE[2]) {
        pm.fill_path(
            &poly(&q),
            &paint(144, 238, 144),
            FillRule::Winding,
            tf,
            None,
        );
    }
    // Walls (LightGray fat segments).
    let mut pb = PathBuilder::new();
    for (a, b) in WALL_SEGMENTS {
        pb.move_to(a.0, a.1);
        pb.line_to(b.0, b.1);
    }
    let walls = pb.finish().expect("segments");
    let stroke = |w: f32| Stroke {
        width: w,
        ..Default::default()
    };
    pm.stroke_path(&walls, &paint(211, 211, 211), &stroke(4.0), tf, None);
    // Block: LightSlateGray x 1.2 fill, LightSlateGray 2 px edge.
    for q in t_polygons(s[2], s[3], s[4]) {
        let p = poly(&q);
        pm.fill_path(&p, &paint(142, 163, 183), FillRule::Winding, tf, None);
        pm.stroke_path(&p, &paint(119, 136, 153), &stroke(2.0), tf, None);
    }
    // Agent: RoyalBlue disc, lighter inner disc.
    let disc = |r: f32| {
        let mut pb = PathBuilder::new();
        pb.push_circle(s[0], s[1], r);
        pb.finish().expect("a circle")
    };
    pm.fill_path(
        &disc(AGENT_RADIUS),
        &paint(65, 105, 225),
        FillRule::Winding,
        tf,
        None,
    );
    pm.fill_path(
        &disc(AGENT_RADIUS - 4.0),
        &paint(78, 126, 255),
        FillRule::Winding,
        tf,
        None,
    );
    let data = pm
        .data()
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    Frame {
        height: size,
        width: size,
        data,
    }
}
