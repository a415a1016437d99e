//! kvmclock-core: plain-Rust, bit-exact model of the x86-64 KVM clock math.
pub mod math64;
