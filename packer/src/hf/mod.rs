mod awq;
mod gptq;
pub mod quantized;
