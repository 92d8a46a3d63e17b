//! The runtime: a bundle loaded on an engine as a world model ([`model`]), the robot-facing MPC
//! controller ([`controller`]), the episode loop over a simulator and the controller
//! ([`episode`]), memory budgets ([`budget`]), run reports ([`report`]), parity checks
//! ([`verify`]), graph benchmarks ([`bench`](mod@bench)), board profiles ([`target`]), synthetic full-size
//! bundles ([`synth`]) and the typed settings of a planning run ([`settings`]).

pub mod bench;
pub mod budget;
pub mod controller;
pub mod episode;
pub mod model;
pub mod report;
pub mod settings;
pub mod synth;
pub mod target;
pub mod verify;
