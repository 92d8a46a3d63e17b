//! The bottom layer: process-wide memory accounting and limits ([`mem`]), /proc readings
//! ([`proc`]), statistics ([`stats`]) and formatting ([`fmt`]). Nothing here knows about models.

pub mod fmt;
pub mod mem;
pub mod proc;
pub mod stats;
