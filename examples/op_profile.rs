//! Per-operator time of one graph call in tract: `cargo run --release --example op_profile -- GRAPH BATCH`.
use prost::Message;
use std::collections::HashMap;
use std::time::Instant;
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = &args[1];
    let batch: usize = args[2].parse()?;
    let bytes = std::fs::read(path)?;
    let proto = tract_onnx::pb::ModelProto::decode(&bytes[..])?;
    let mut model = tract_onnx::onnx().model_for_proto_model(&proto)?;
    let mut inputs = tvec![];
    for (i, inp) in proto.graph.as_ref().unwrap().input.iter().enumerate() {
        let shape: Vec<usize> = match &inp.r#type.as_ref().unwrap().value {
            Some(tract_onnx::pb::type_proto::Value::TensorType(t)) => t
                .shape
                .as_ref()
                .unwrap()
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                        *v as usize
                    }
                    _ => batch,
                })
                .collect(),
            _ => panic!(),
        };
        model.set_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), shape.clone()))?;
        let n: usize = shape.iter().product();
        inputs.push(Tensor::from_shape(&shape, &vec![0.1f32; n])?.into_tvalue());
    }
    let typed = model.into_optimized()?;
    if std::env::var("SHOW").is_ok() {
        let pat = std::env::var("SHOW").unwrap();
        for node in typed.nodes() {
            if node.op().name().contains(pat.as_str()) {
                let facts: Vec<String> = node
                    .inputs
                    .iter()
                    .map(|o| format!("{:?}", typed.outlet_fact(*o).unwrap()))
                    .collect();
                println!(
                    "{} {} {:?} <- {:?}",
                    node.name,
                    node.op().name(),
                    node.op().info()?,
                    facts
                );
            }
        }
    }
    let plan = typed.into_runnable()?;
    let mut state = plan.spawn()?;
    state.run(inputs.clone())?;
    let mut times: HashMap<String, (f64, usize)> = HashMap::new();
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        state.run_plan_with_eval(inputs.clone(), |ctx, st, node, input| {
            let t = Instant::now();
            let r = tract_core::plan::eval(ctx, st, node, input);
            let key = if std::env::var("BY_NODE").is_ok() {
                format!("{} {}", node.op().name(), node.name)
            } else {
                format!("{}", node.op().name())
            };
            let e = times.entry(key).or_default();
            e.0 += t.elapsed().as_secs_f64();
            e.1 += 1;
            r
        })?;
    }
    let total = t0.elapsed().as_secs_f64() / reps as f64;
    let mut v: Vec<_> = times.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.partial_cmp(&a.1 .0).unwrap());
    println!("total {:.1} ms per call", total * 1000.0);
    for (k, (t, n)) in v.iter().take(15) {
        println!(
            "{:>30} {:8.2} ms  ({} nodes)",
            k,
            t / reps as f64 * 1000.0,
            n / reps
        );
    }
    Ok(())
}
