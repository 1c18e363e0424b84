//! Borough simulator
pub mod disk;
