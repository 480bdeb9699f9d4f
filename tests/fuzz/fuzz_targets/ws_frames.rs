//! Fuzz target: `license_gateway::fuzzing::ws_frames` (see its doc for what must hold).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| license_gateway::fuzzing::ws_frames(data));
