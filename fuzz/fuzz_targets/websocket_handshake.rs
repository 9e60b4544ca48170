#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::websocket_handshake(data));
