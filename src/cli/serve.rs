//! `qwm serve`: the MPC controller behind a socket (docs/serve.md).

use crate::runtime::controller::Controller;
use crate::runtime::settings::ControllerArgs;
use crate::serve::{serve as run_server, Listen, ServeOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct ServeArgs {
    /// Bundle folder.
    #[arg(long, default_value = "models/wall")]
    pub model: PathBuf,
    /// Where to listen: unix:PATH (a socket the server creates and removes), tcp:HOST:PORT
    /// (port 0: any free port; the address is printed), or stdio (requests on stdin, replies on
    /// stdout).
    #[arg(long)]
    pub listen: String,
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// Largest frame payload a request may declare, e.g. 64M.
    #[arg(long, default_value = "64M")]
    pub max_frame_bytes: String,
    /// Seconds within which the rest of a started message must arrive (and a reply be read).
    #[arg(long, default_value_t = 10.0)]
    pub io_timeout: f64,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let listen = Listen::parse(&args.listen)?;
    let max = crate::util::mem::parse_size(&args.max_frame_bytes, "--max-frame-bytes")?;
    if max == 0 || max > u32::MAX as u64 {
        bail!(
            "--max-frame-bytes {}: must be in 1..4G",
            args.max_frame_bytes
        );
    }
    if !(args.io_timeout.is_finite() && args.io_timeout > 0.0 && args.io_timeout <= 86400.0) {
        bail!(
            "--io-timeout {}: must be in (0, 86400] seconds",
            args.io_timeout
        );
    }
    let opts = ServeOptions {
        max_blob: max as u32,
        io_timeout: Duration::from_secs_f64(args.io_timeout),
    };
    let c = &args.controller;
    let mut ctl = Controller::open(&args.model, &c.control, &c.run, c.seed)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let s = ctl.shape();
    let model = args.model.display().to_string();
    run_server(&mut ctl, &listen, &opts, &mut |addr| {
        // On stderr, whatever the transport: with stdio, stdout carries the replies.
        eprintln!(
            "qwm serve: model {model}, horizon {}, {} taken, {} candidates per predictor call; listening on {addr}",
            s.horizon, s.n_taken, s.chunk
        );
    })?;
    Ok(())
}
