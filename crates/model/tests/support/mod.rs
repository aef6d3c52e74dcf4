//! Helpers shared by the model crate's integration tests: the device they run on and the
//! tolerance checks of the parity tests.
#![allow(dead_code)] // each test binary uses its own subset

use candle_core::{DType, Device, Tensor};

/// The device the model tests run on: the CPU, or the first CUDA GPU when
/// `ENTROVID_TEST_DEVICE=cuda` (a build with `--features cuda`, on a GPU machine).
pub fn test_device() -> Device {
    match std::env::var("ENTROVID_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            Device::new_cuda(0).expect("ENTROVID_TEST_DEVICE=cuda needs a CUDA build and GPU")
        }
        Ok("cpu") | Err(_) => Device::Cpu,
        Ok(other) => panic!("ENTROVID_TEST_DEVICE must be cpu or cuda, not {other:?}"),
    }
}

fn on_cpu_f64(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// max |t|, computed in f64 on the CPU.
pub fn max_abs(t: &Tensor) -> f64 {
    on_cpu_f64(t)
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// max |a − b|, computed in f64 on the CPU (0 exactly when the tensors are bit-identical).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    max_abs(&(on_cpu_f64(a) - on_cpu_f64(b)).unwrap())
}

/// The parity tolerance: max|out − ref| ≤ rel · max(1, max|ref|).
pub fn assert_close(what: &str, out: &Tensor, reference: &Tensor, rel: f64) {
    assert_eq!(out.dims(), reference.dims(), "{what}: shape");
    let diff = max_abs_diff(out, reference);
    let scale = max_abs(reference);
    let bound = rel * scale.max(1.0);
    assert!(
        diff <= bound,
        "{what}: max abs diff {diff:e} > {bound:e} (max |ref| {scale})"
    );
}
