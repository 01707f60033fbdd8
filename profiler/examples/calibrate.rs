//! Runs a calibration and prints the profile: `cargo run --release -p profiler
//! --example calibrate -- [--quick] [--link-gbps X] [--model M] [--out FILE]`.

use kernels::{Backend, BackendOptions, DeviceSpec};
use profiler::{calibrate, CalibrateOptions, CalibrationEvent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let val = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let device: DeviceSpec = val("--device").unwrap_or_else(|| "cpu".into()).parse()?;
    let link_gbps = val("--link-gbps").map(|v| v.parse()).transpose()?;
    let be = Backend::new(
        device,
        BackendOptions {
            link_gbps,
            dtype: None,
        },
    )?;
    let model = val("--model")
        .map(|m| plans::ModelSpec::resolve(&m))
        .transpose()?;
    let opts = CalibrateOptions {
        quick: args.iter().any(|a| a == "--quick"),
        model,
        name: val("--name"),
    };
    let t0 = std::time::Instant::now();
    let profile = calibrate(&be, &opts, &mut |e| {
        if let CalibrationEvent::Step { stage, what } = e {
            eprintln!("[{:6.2}s] {stage}: {what}", t0.elapsed().as_secs_f64());
        }
    })?;
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
    match val("--out") {
        Some(p) => plans::write_atomic(
            std::path::Path::new(&p),
            (profile.to_json() + "\n").as_bytes(),
        )?,
        None => println!("{}", profile.to_json()),
    }
    Ok(())
}
