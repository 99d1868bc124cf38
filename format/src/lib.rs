//! The llamafile container, shared by `pack` and the runtime: a GGUF file (parsed and written),
//! the zip appended to an executable that holds it (`bundle`, with the `.args` file of default
//! arguments), the signed manifest (`signature`), and the two rules every reader of a file obeys:
//! open only regular files (`input`) and escape every string from a file before it reaches a
//! terminal (`escape`). Nothing here runs a model.

pub mod bundle;
pub mod describe;
pub mod escape;
pub mod gguf;
pub mod input;
pub mod signature;
