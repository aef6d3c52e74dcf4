//! The device the model tests run on: the CPU, or the first CUDA GPU when
//! `ENTROVID_TEST_DEVICE=cuda` (a build with `--features cuda`, on a GPU machine).

use candle_core::Device;

pub fn test_device() -> Device {
    match std::env::var("ENTROVID_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            Device::new_cuda(0).expect("ENTROVID_TEST_DEVICE=cuda needs a CUDA build and GPU")
        }
        Ok("cpu") | Err(_) => Device::Cpu,
        Ok(other) => panic!("ENTROVID_TEST_DEVICE must be cpu or cuda, not {other:?}"),
    }
}
