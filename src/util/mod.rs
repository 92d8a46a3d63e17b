//! The bottom layer: process-wide memory accounting and limits ([`mem`]), /proc readings
//! ([`proc`]), statistics ([`stats`]), formatting ([`fmt`]) and safe file reads and writes
//! ([`fs`]). Nothing here knows about models.

pub mod fmt;
pub mod fs;
pub mod mem;
pub mod proc;
pub mod stats;
