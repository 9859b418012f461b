pub mod inspect;
pub mod bench;
pub mod optimize;
pub mod passes;
