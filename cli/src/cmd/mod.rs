pub mod bench;
pub mod bench_quantize;
pub mod bench_runtime;
pub mod compare;
pub mod inspect;
pub mod optimize;
pub mod passes;
pub mod run;
