#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| eai_gateway::fuzzing::parse_config(data));
