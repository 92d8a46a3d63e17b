//! `qwm report`: a study's results as a markdown table and plots (SVG and PNG, via plotters).
//!
//! Plots, each drawn only when the grid has the cells it needs:
//! - `success_vs_bits`: success rate against weight bits, one line per method x granularity
//!   (both modules quantized), float as a reference line;
//! - `module_sensitivity`: the same for encoder-only, predictor-only and both;
//! - `objective_vs_distance`: every episode's final planner objective against its final distance,
//!   one colour per weight bit width (the objective-success alignment);
//! - `success_vs_opt_steps` / `success_vs_max_iter`: success against the planner budget per scheme;
//! - `success_vs_memory`: success against weight bytes at their bit width, with the Pareto front.
//!
//! Text needs a TrueType font: `--font FILE`, else DejaVu Sans or Liberation Sans from the usual
//! system folders (Debian: fonts-dejavu-core).

use super::{CellResult, Module};
use crate::error::{QwmError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Font files tried when `--font` is not given.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Register the plot font once (plotters keeps a `'static` reference to its bytes).
fn register_font(font: Option<&Path>) -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    let r = DONE.get_or_init(|| {
        let path: PathBuf = match font {
            Some(p) => p.to_path_buf(),
            None => FONT_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or_else(|| {
                    format!(
                        "no TrueType font for plot labels (tried {}); install fonts-dejavu-core or pass --font FILE",
                        FONT_CANDIDATES.join(", ")
                    )
                })?,
        };
        let bytes = crate::util::fs::read_regular(&path, 64 << 20)
            .map_err(|e| format!("--font {}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("--font {}: not a TrueType/OpenType font", path.display()))
    });
    r.clone().map_err(QwmError::Usage)
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mark {
    Line,
    Points,
    Reference,
}

#[derive(Clone, Debug)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    mark: Mark,
}

#[derive(Clone, Debug)]
struct Chart {
    stem: &'static str,
    title: String,
    x_label: String,
    y_label: String,
    x_range: (f64, f64),
    y_range: (f64, f64),
    series: Vec<Series>,
}

fn draw_on<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let pe =
        |e: DrawingAreaErrorKind<DB::ErrorType>| QwmError::Usage(format!("plot {}: {e:?}", c.stem));
    root.fill(&WHITE).map_err(pe)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(c.x_range.0..c.x_range.1, c.y_range.0..c.y_range.1)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(pe)?;
    for (i, s) in c.series.iter().enumerate() {
        let color = if s.mark == Mark::Reference {
            RGBColor(90, 90, 90)
        } else {
            let c = Palette99::pick(i).to_rgba();
            RGBColor(c.0, c.1, c.2)
        };
        let style = ShapeStyle::from(&color).stroke_width(2);
        if s.mark == Mark::Line {
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(pe)?;
        }
        let anno = match s.mark {
            Mark::Line | Mark::Reference => chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(pe)?,
            Mark::Points => chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.mix(0.7).filled())),
                )
                .map_err(pe)?,
        };
        anno.label(s.name.as_str()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
        });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(pe)?;
    root.present().map_err(pe)?;
    Ok(())
}

fn draw(dir: &Path, c: &Chart) -> Result<Vec<PathBuf>> {
    let svg = dir.join(format!("{}.svg", c.stem));
    let png = dir.join(format!("{}.png", c.stem));
    let size = (760, 480);
    draw_on(SVGBackend::new(&svg, size).into_drawing_area(), c)?;
    draw_on(BitMapBackend::new(&png, size).into_drawing_area(), c)?;
    for p in [&svg, &png] {
        if !p.exists() {
            return Err(QwmError::Usage(format!(
                "plot {} was not written",
                p.display()
            )));
        }
    }
    Ok(vec![svg, png])
}

/// Granularity label of a cell's scheme.
fn granularity(r: &CellResult) -> String {
    match r.group {
        Some(g) => format!("group {g}"),
        None => "per-channel".into(),
    }
}

fn act_label(r: &CellResult) -> String {
    match (r.act_bits, r.per_token) {
        (None, _) => "".into(),
        (Some(a), false) => format!(" a{a} per-tensor"),
        (Some(a), true) => format!(" a{a} per-token"),
    }
}

/// The (opt_steps, max_iter) budget with the most cells: the study's main budget.
fn main_budget(rs: &[CellResult]) -> Option<(usize, usize)> {
    let mut n: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for r in rs {
        *n.entry((r.cell.opt_steps, r.cell.max_iter)).or_default() += 1;
    }
    n.into_iter()
        .max_by_key(|(k, v)| (*v, std::cmp::Reverse(*k)))
        .map(|(k, _)| k)
}

/// Mean success over seeds of cells sharing everything else.
fn mean_success(cells: &[&CellResult]) -> f64 {
    let (s, n) = cells.iter().fold((0usize, 0usize), |(s, n), r| {
        (s + r.successes, n + r.cell.episodes)
    });
    s as f64 / n.max(1) as f64
}

fn bits_x(bits: u32) -> f64 {
    // Float is drawn at x = 10 (right of 8 bits) to keep the axis readable.
    if bits >= 16 {
        10.0
    } else {
        bits as f64
    }
}

fn float_reference(rs: &[&CellResult], x_range: (f64, f64)) -> Option<Series> {
    let f: Vec<&CellResult> = rs
        .iter()
        .copied()
        .filter(|r| r.cell.method.is_none())
        .collect();
    if f.is_empty() {
        return None;
    }
    let y = mean_success(&f);
    Some(Series {
        name: format!("float ({y:.2})"),
        points: vec![(x_range.0, y), (x_range.1, y)],
        mark: Mark::Reference,
    })
}

fn bits_series(rs: &[&CellResult], key: impl Fn(&CellResult) -> Option<String>) -> Vec<Series> {
    let mut groups: BTreeMap<String, BTreeMap<u32, Vec<&CellResult>>> = BTreeMap::new();
    for r in rs {
        if let Some(k) = key(r) {
            groups
                .entry(k)
                .or_default()
                .entry(r.weight_bits)
                .or_default()
                .push(r);
        }
    }
    groups
        .into_iter()
        .map(|(name, by_bits)| Series {
            name,
            points: by_bits
                .into_iter()
                .map(|(b, v)| (bits_x(b), mean_success(&v)))
                .collect(),
            mark: Mark::Line,
        })
        .collect()
}

fn fmt_bytes(b: u64) -> String {
    crate::util::fmt::fmt_bytes(b)
}

/// Write `report.md` and the plots into `out`; returns the files written.
pub fn write_report(
    results: &[CellResult],
    out: &Path,
    font: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    if results.is_empty() {
        return Err(QwmError::Usage("no finished cells to report".into()));
    }
    register_font(font)?;
    std::fs::create_dir_all(out).map_err(|e| QwmError::io(out, e))?;
    let mut files = Vec::new();
    let budget = main_budget(results).expect("non-empty");
    let at_budget: Vec<&CellResult> = results
        .iter()
        .filter(|r| (r.cell.opt_steps, r.cell.max_iter) == budget)
        .collect();
    let bits_range = (2.5, 10.5);
    let mut charts = Vec::new();
    let mut notes = Vec::new();

    // 1. Success vs bits per method x granularity (both modules, weight-only and W+A apart).
    let mut s = bits_series(&at_budget, |r| match (r.cell.method, r.cell.module) {
        (Some(m), Some(Module::Both)) => Some(format!(
            "{} {}{}",
            super::method_name(m),
            granularity(r),
            act_label(r)
        )),
        _ => None,
    });
    if !s.is_empty() {
        s.extend(float_reference(&at_budget, bits_range));
        charts.push(Chart {
            stem: "success_vs_bits",
            title: format!(
                "Success vs weight bits (both modules; {} opt steps, {} MPC steps)",
                budget.0, budget.1
            ),
            x_label: "weight bits (10 = float)".into(),
            y_label: "success rate".into(),
            x_range: bits_range,
            y_range: (0.0, 1.05),
            series: s,
        });
    } else {
        notes.push("success_vs_bits: no cells quantize both modules at the main budget");
    }

    // 2. Encoder vs predictor sensitivity (RTN, weight-only-or-not kept in the label).
    let s = bits_series(&at_budget, |r| match (r.cell.method, r.cell.module) {
        (Some(m), Some(md)) => Some(format!(
            "{} {} {}{}",
            md.name(),
            super::method_name(m),
            granularity(r),
            act_label(r)
        )),
        _ => None,
    });
    let modules: std::collections::BTreeSet<Module> =
        at_budget.iter().filter_map(|r| r.cell.module).collect();
    if modules.len() > 1 {
        let mut s = s;
        s.extend(float_reference(&at_budget, bits_range));
        charts.push(Chart {
            stem: "module_sensitivity",
            title: "Which module is quantized: encoder vs predictor vs both".into(),
            x_label: "weight bits (10 = float)".into(),
            y_label: "success rate".into(),
            x_range: bits_range,
            y_range: (0.0, 1.05),
            series: s,
        });
    } else {
        notes.push("module_sensitivity: the grid quantizes only one kind of module");
    }

    // 3. Objective vs final distance per weight bit width.
    let mut by_bits: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for r in at_budget
        .iter()
        .filter(|r| matches!(r.cell.module, None | Some(Module::Both)))
    {
        for e in &r.per_episode {
            if e.final_objective.is_finite() && e.final_distance.is_finite() {
                by_bits
                    .entry(r.weight_bits)
                    .or_default()
                    .push((e.final_objective, e.final_distance));
            }
        }
    }
    if !by_bits.is_empty() {
        let all: Vec<(f64, f64)> = by_bits.values().flatten().copied().collect();
        let xmax = all.iter().map(|p| p.0).fold(0.0, f64::max) * 1.05 + 1e-6;
        let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.05 + 1e-6;
        charts.push(Chart {
            stem: "objective_vs_distance",
            title: "Planner objective vs final distance, per weight bit width".into(),
            x_label: "final planner objective (latent MSE)".into(),
            y_label: "final distance to goal".into(),
            x_range: (0.0, xmax),
            y_range: (0.0, ymax),
            series: by_bits
                .into_iter()
                .map(|(b, pts)| Series {
                    name: if b >= 16 {
                        "float".into()
                    } else {
                        format!("w{b}")
                    },
                    points: pts,
                    mark: Mark::Points,
                })
                .collect(),
        });
    }

    // 4. Success vs planner budget, per scheme (cells that share the other budget axis).
    for (stem, axis) in [("success_vs_opt_steps", 0usize), ("success_vs_max_iter", 1)] {
        let mut groups: BTreeMap<String, BTreeMap<usize, Vec<&CellResult>>> = BTreeMap::new();
        for r in results {
            let (x, other, other_main) = if axis == 0 {
                (r.cell.opt_steps, r.cell.max_iter, budget.1)
            } else {
                (r.cell.max_iter, r.cell.opt_steps, budget.0)
            };
            if other != other_main {
                continue;
            }
            let name = match (r.cell.method, r.cell.module) {
                (Some(m), Some(md)) => {
                    format!("{} {} {}", super::method_name(m), md.name(), r.cell.scheme)
                }
                _ => "float".into(),
            };
            groups
                .entry(name)
                .or_default()
                .entry(x)
                .or_default()
                .push(r);
        }
        groups.retain(|_, v| v.len() > 1);
        if groups.is_empty() {
            notes.push(if axis == 0 {
                "success_vs_opt_steps: the grid has one opt_steps value per scheme"
            } else {
                "success_vs_max_iter: the grid has one max_iter value per scheme"
            });
            continue;
        }
        let xmax = groups
            .values()
            .flat_map(|v| v.keys())
            .copied()
            .max()
            .unwrap_or(1) as f64;
        charts.push(Chart {
            stem,
            title: if axis == 0 {
                format!("Success vs CEM optimization steps ({} MPC steps)", budget.1)
            } else {
                format!("Success vs MPC steps per episode ({} opt steps)", budget.0)
            },
            x_label: if axis == 0 {
                "opt steps"
            } else {
                "max MPC steps"
            }
            .into(),
            y_label: "success rate".into(),
            x_range: (0.0, xmax * 1.05),
            y_range: (0.0, 1.05),
            series: groups
                .into_iter()
                .map(|(name, v)| Series {
                    name,
                    points: v
                        .into_iter()
                        .map(|(x, cells)| (x as f64, mean_success(&cells)))
                        .collect(),
                    mark: Mark::Line,
                })
                .collect(),
        });
    }

    // 5. Success vs weight memory with the Pareto front.
    let mut pts: Vec<(f64, f64)> = at_budget
        .iter()
        .map(|r| (r.weight_bytes_at_bits as f64 / 1024.0, r.success_rate))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let front = pareto_front(&pts);
    let xmax = pts.iter().map(|p| p.0).fold(0.0, f64::max) * 1.08 + 1.0;
    charts.push(Chart {
        stem: "success_vs_memory",
        title: "Success vs weight memory at bit width (Pareto front)".into(),
        x_label: "weights at their bit width (KiB)".into(),
        y_label: "success rate".into(),
        x_range: (0.0, xmax),
        y_range: (0.0, 1.05),
        series: vec![
            Series {
                name: "cells".into(),
                points: pts,
                mark: Mark::Points,
            },
            Series {
                name: "Pareto front".into(),
                points: front,
                mark: Mark::Line,
            },
        ],
    });

    for c in &charts {
        files.extend(draw(out, c)?);
    }

    let md = markdown(results, budget, &charts, &notes);
    let path = out.join("report.md");
    crate::util::fs::write_atomic(&path, md.as_bytes()).map_err(|e| QwmError::io(&path, e))?;
    files.push(path);
    Ok(files)
}

/// Points not dominated by one with less memory and at least the same success, as a staircase.
fn pareto_front(sorted: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut front: Vec<(f64, f64)> = Vec::new();
    for &(x, y) in sorted {
        if front.last().is_none_or(|&(_, best)| y > best) {
            if let Some(&(_, prev)) = front.last() {
                front.push((x, prev));
            }
            front.push((x, y));
        }
    }
    front
}

/// Discordant episode pairs against the float cell of the same seed, budget and episodes
/// (episodes are paired by index: the same task seeds): (float succeeded and `r` failed, the
/// reverse). None for a float cell or without a comparable float cell.
fn paired_with_float(r: &CellResult, floats: &[&CellResult]) -> Option<(usize, usize)> {
    if r.cell.scheme == "float" {
        return None;
    }
    let f = floats.iter().find(|f| {
        (
            f.cell.opt_steps,
            f.cell.max_iter,
            f.cell.seed,
            f.per_episode.len(),
        ) == (
            r.cell.opt_steps,
            r.cell.max_iter,
            r.cell.seed,
            r.per_episode.len(),
        ) && !r.per_episode.is_empty()
    })?;
    let (mut lost, mut won) = (0, 0);
    for (a, b) in f.per_episode.iter().zip(&r.per_episode) {
        match (a.success, b.success) {
            (true, false) => lost += 1,
            (false, true) => won += 1,
            _ => {}
        }
    }
    Some((lost, won))
}

fn markdown(
    results: &[CellResult],
    budget: (usize, usize),
    charts: &[Chart],
    notes: &[&str],
) -> String {
    let mut rs: Vec<&CellResult> = results.iter().collect();
    rs.sort_by(|a, b| {
        (
            a.cell.opt_steps,
            a.cell.max_iter,
            a.cell.module,
            std::cmp::Reverse(a.weight_bits),
        )
            .cmp(&(
                b.cell.opt_steps,
                b.cell.max_iter,
                b.cell.module,
                std::cmp::Reverse(b.weight_bits),
            ))
            .then(a.cell.id.cmp(&b.cell.id))
    });
    let mut s = String::new();
    let _ = writeln!(s, "# qwm study report\n");
    #[derive(Clone, Copy)]
    enum Alignment {
        Spearman,
        Auroc,
    }
    // The statistic over the episodes `idx` (all of them when None).
    fn alignment(r: &CellResult, which: Alignment, idx: Option<&[usize]>) -> Option<f64> {
        let all: Vec<usize>;
        let idx = match idx {
            Some(i) => i,
            None => {
                all = (0..r.per_episode.len()).collect();
                &all
            }
        };
        let e = &r.per_episode;
        let obj: Vec<f64> = idx.iter().map(|&i| e[i].final_objective).collect();
        match which {
            Alignment::Spearman => {
                let d: Vec<f64> = idx.iter().map(|&i| e[i].final_distance).collect();
                crate::util::stats::spearman(&obj, &d)
            }
            Alignment::Auroc => {
                let failed: Vec<bool> = idx.iter().map(|&i| !e[i].success).collect();
                crate::util::stats::auroc(&obj, &failed)
            }
        }
    }
    fn alignment_ci(r: &CellResult, which: Alignment) -> Option<(f64, f64)> {
        crate::util::stats::bootstrap_ci(
            r.per_episode.len(),
            &|idx| alignment(r, which, Some(idx)),
            2000,
            0.95,
            0,
        )
    }
    fn with_interval(v: Option<f64>, ci: Option<(f64, f64)>, signed: bool) -> String {
        let f = |x: f64| {
            if signed {
                format!("{x:+.2}")
            } else {
                format!("{x:.2}")
            }
        };
        match (v, ci) {
            (Some(v), Some((lo, hi))) => format!("{} [{}, {}]", f(v), f(lo), f(hi)),
            (Some(v), None) => f(v),
            _ => "-".into(),
        }
    }
    let _ = writeln!(
        s,
        "{} cells; main planner budget: {} opt steps, {} MPC steps. Success is the environment's criterion; \
         Spearman is the rank correlation between final planner objective and final distance across a cell's episodes \
         (high = the objective still tells good plans from bad); AUROC is how well the final objective tells failed \
         episodes from successful ones (0.5 = not at all; needs both); both with percentile bootstrap 95% intervals \
         (2000 resamples of the cell's episodes, seed 0). Weights at bits: quantized Linear weights as integer \
         codes plus scales, everything else f32.\n",
        results.len(),
        budget.0,
        budget.1
    );
    let _ = writeln!(s, "| cell | module | method | scheme | opt/MPC steps | seed | success [Wilson 95%] | vs float: lost/won, McNemar p | mean dist | mean objective | Spearman [95%] | AUROC objective -> failure [95%] | plan s/step p50 | weights at bits | ONNX files |");
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let floats: Vec<&CellResult> = rs
        .iter()
        .copied()
        .filter(|r| r.cell.scheme == "float")
        .collect();
    for r in rs {
        let vs_float = paired_with_float(r, &floats)
            .map(|(b, c)| format!("{b}/{c}, p {:.3}", crate::util::stats::mcnemar_exact(b, c)))
            .unwrap_or_else(|| "-".into());
        let interval = crate::util::stats::wilson(r.successes, r.cell.episodes, 1.96);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {}/{} | {} | {}/{} ({:.2}) [{:.2}, {:.2}] | {} | {:.2} | {:.4} | {} | {} | {:.2} | {} | {} |",
            r.cell.id,
            r.cell.module.map(|m| m.name()).unwrap_or("-"),
            r.cell.method.map(super::method_name).unwrap_or("-"),
            r.cell.scheme,
            r.cell.opt_steps,
            r.cell.max_iter,
            r.cell.seed,
            r.successes,
            r.cell.episodes,
            r.success_rate,
            interval.0,
            interval.1,
            vs_float,
            r.mean_final_distance,
            r.mean_final_objective,
            with_interval(
                r.spearman_objective_distance,
                alignment_ci(r, Alignment::Spearman),
                true
            ),
            with_interval(
                alignment(r, Alignment::Auroc, None),
                alignment_ci(r, Alignment::Auroc),
                false
            ),
            r.plan_time_p50_s,
            fmt_bytes(r.weight_bytes_at_bits),
            fmt_bytes(r.model_file_bytes),
        );
    }
    // Success against the MPC-step budget, from the same runs (cells that recorded MPC steps and
    // ran more than 10 of them), with Wilson 95% intervals of every rate.
    let budgets = [1usize, 2, 3, 5, 10, 20, 30, 50];
    let curves: Vec<&CellResult> = results
        .iter()
        .filter(|r| r.cell.max_iter > 10 && r.per_episode.iter().all(|p| p.mpc_steps.is_some()))
        .collect();
    if !curves.is_empty() {
        let _ = writeln!(
            s,
            "\n## Success against the MPC-step budget\n\nAn episode stops at its first successful \
             MPC step, so one that succeeded after k steps counts for every budget >= k: one run \
             at max_iter gives the whole curve. Each entry: successes, then the Wilson 95% interval \
             of the rate.\n"
        );
        let _ = writeln!(
            s,
            "| cell | episodes | {} |",
            budgets
                .iter()
                .map(|b| format!("<= {b}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|---|{}", "---|".repeat(budgets.len()));
        for r in curves {
            let n = r.per_episode.len();
            let cols: Vec<String> = budgets
                .iter()
                .map(|&b| {
                    if b > r.cell.max_iter {
                        return "-".into();
                    }
                    let k = r
                        .per_episode
                        .iter()
                        .filter(|p| p.success && p.mpc_steps.is_some_and(|m| m <= b))
                        .count();
                    let (lo, hi) = crate::util::stats::wilson(k, n, 1.96);
                    format!("{k} [{lo:.2}, {hi:.2}]")
                })
                .collect();
            let _ = writeln!(s, "| {} | {n} | {} |", r.cell.id, cols.join(" | "));
        }
    }
    let _ = writeln!(s, "\n## Plots\n");
    for c in charts {
        let _ = writeln!(s, "### {}\n\n![{}]({}.svg)\n", c.title, c.stem, c.stem);
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "Not drawn:");
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped study's float cell at max_iter 50, with each episode's MPC steps from its
    /// plan report: the budget table counts the successes within each budget.
    #[test]
    fn success_against_the_mpc_budget_counts_each_success_from_its_step_on() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/study/wall50");
        let line = std::fs::read_to_string(root.join("results.jsonl")).unwrap();
        let mut r: CellResult = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(r.cell.id, "float-o10-i50-s0");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("cells/float-o10-i50-s0.json")).unwrap(),
        )
        .unwrap();
        let steps: Vec<usize> = report["episodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["mpc_steps"].as_u64().unwrap() as usize)
            .collect();
        for (p, k) in r.per_episode.iter_mut().zip(&steps) {
            p.mpc_steps = Some(*k);
        }
        let within = |b: usize| steps.iter().filter(|&&k| k <= b).count();
        let md = markdown(&[r], (10, 50), &[], &[]);
        let row = md
            .lines()
            .find(|l| l.starts_with("| float-o10-i50-s0 | 50 |"))
            .expect("budget row");
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(cells[2].starts_with(&format!("{} [", within(1))), "{row}");
        assert!(cells[3].starts_with(&format!("{} [", within(2))), "{row}");
        assert!(cells[9].starts_with("50 [0.93, 1.00]"), "{row}");
        assert!(md.contains("50/50 (1.00) [0.93, 1.00]"), "{md}");
    }

    /// The shipped wall50 float and W4-g128 cells, paired episode by episode: the report's
    /// discordant counts are those of the per-episode records, and the p value is McNemar's.
    #[test]
    fn quantized_cells_are_paired_with_the_float_cell_by_episode() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/study/wall50");
        let text = std::fs::read_to_string(root.join("results.jsonl")).unwrap();
        let rs: Vec<CellResult> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let q = rs
            .iter()
            .find(|r| r.cell.id == "rtn-both-w4-g128-o10-i50-s0")
            .expect("the W4-g128 cell");
        let f = rs.iter().find(|r| r.cell.scheme == "float").unwrap();
        let lost = f
            .per_episode
            .iter()
            .zip(&q.per_episode)
            .filter(|(a, b)| a.success && !b.success)
            .count();
        let won = f
            .per_episode
            .iter()
            .zip(&q.per_episode)
            .filter(|(a, b)| !a.success && b.success)
            .count();
        assert_eq!(paired_with_float(q, &[f]), Some((lost, won)));
        assert_eq!((lost, won), (16, 0), "float 50/50 against W4-g128 34/50");
        assert_eq!(paired_with_float(f, &[f]), None);
        let md = markdown(&rs, (10, 50), &[], &[]);
        let want = format!(
            "| 16/0, p {:.3} |",
            crate::util::stats::mcnemar_exact(16, 0)
        );
        assert!(md.contains(&want), "{md}");
    }

    #[test]
    fn pareto_front_is_a_staircase_of_undominated_points() {
        let pts = [(1.0, 0.2), (2.0, 0.1), (3.0, 0.6), (4.0, 0.6), (5.0, 0.9)];
        assert_eq!(
            pareto_front(&pts),
            vec![(1.0, 0.2), (3.0, 0.2), (3.0, 0.6), (5.0, 0.6), (5.0, 0.9)]
        );
        assert!(pareto_front(&[]).is_empty());
    }
}
