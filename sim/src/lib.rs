//! Borough simulator
