//! The versioned C ABI between the runtime and a dynamically loaded GPU backend (issue #7).
pub mod abi;
