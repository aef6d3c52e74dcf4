//! Loading the safetensors weights of one diffusers component folder (`unet/`, `vae/`,
//! `text_encoder/`) as a [`candle_nn::VarBuilder`], with errors that name the file and the key.
//!
//! A component folder holds its weights in one of these layouts, looked for in this order of
//! preference (`STEM` is `diffusion_pytorch_model` for diffusers models and `model` for
//! transformers models such as the text encoder):
//!
//! 1. `STEM.safetensors` (one file)
//! 2. `STEM.safetensors.index.json` (shards listed in its `weight_map`)
//! 3. `STEM.fp16.safetensors` (diffusers' `fp16` variant, one file)
//! 4. `STEM.safetensors.index.fp16.json` (the sharded `fp16` variant)
//!
//! When the requested dtype is f16 the two `fp16` variants come first: they hold exactly the values
//! a conversion of the full-precision file would give, at half the reading cost. Stored f16, bf16,
//! f32 and f64 tensors are converted to the requested dtype on load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ModelError;

/// The file-name stems of diffusers and transformers weights, in the order they are looked for.
const WEIGHT_STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// Reads and parses a JSON file, naming the file in every error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|error| io_error(path, &error))?;
    serde_json::from_str(&text).map_err(|error| ModelError::invalid_config(path, error.to_string()))
}

/// A missing file is [`ModelError::MissingFile`]; any other read failure is reported as an
/// unreadable file.
pub(crate) fn io_error(path: &Path, error: &std::io::Error) -> ModelError {
    if error.kind() == std::io::ErrorKind::NotFound {
        ModelError::MissingFile {
            path: path.to_path_buf(),
        }
    } else {
        ModelError::invalid_config(path, format!("cannot read: {error}"))
    }
}

/// The weights of one component folder, opened (memory-mapped) and ready to build a model from.
pub struct ComponentWeights {
    source: Arc<WeightSource>,
    dtype: DType,
    device: Device,
}

impl ComponentWeights {
    /// Opens the weights of the component folder `dir` (layouts and preference order in the
    /// module documentation); tensors will be produced in `dtype` on `device`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let layout = find_layout(dir, dtype)?;
        let source = WeightSource::open(layout)?;
        Ok(Self {
            source: Arc::new(source),
            dtype,
            device: device.clone(),
        })
    }

    /// A var builder over these weights for model code that loads tensors by key path.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(SharedSource(Arc::clone(&self.source))),
            self.dtype,
            self.device.clone(),
        )
    }

    /// Runs a model constructor on a var builder over these weights. A failure caused by a missing
    /// or misshapen tensor comes back as [`ModelError::MissingTensor`] or
    /// [`ModelError::ShapeMismatch`] naming the file, not as an opaque candle error.
    pub fn build<T>(
        &self,
        constructor: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
    ) -> Result<T, ModelError> {
        constructor(self.var_builder()).map_err(|error| self.source.explain(error))
    }

    /// The file the weights were read from: the single weights file or the shard index.
    pub fn origin(&self) -> &Path {
        &self.source.origin
    }

    /// Whether a tensor with this full key exists.
    pub fn contains(&self, key: &str) -> bool {
        self.source.routing.contains_key(key)
    }
}

/// The files of one component and which file holds each key.
struct WeightSource {
    /// The single weights file or the shard index: what errors about absent keys name.
    origin: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Key → index into `files`.
    routing: HashMap<String, usize>,
    /// Loading failures reported to candle as plain messages, kept typed so that
    /// [`ComponentWeights::build`] can return them as they were.
    failures: Mutex<Vec<ModelError>>,
}

/// Where a component's weights are: one file, or a shard index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    Single(PathBuf),
    Sharded(PathBuf),
}

fn find_layout(dir: &Path, dtype: DType) -> Result<Layout, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::MissingFile {
            path: dir.to_path_buf(),
        });
    }
    for stem in WEIGHT_STEMS {
        let full = [
            Layout::Single(dir.join(format!("{stem}.safetensors"))),
            Layout::Sharded(dir.join(format!("{stem}.safetensors.index.json"))),
        ];
        let half = [
            Layout::Single(dir.join(format!("{stem}.fp16.safetensors"))),
            Layout::Sharded(dir.join(format!("{stem}.safetensors.index.fp16.json"))),
        ];
        let ordered = if dtype == DType::F16 {
            half.into_iter().chain(full)
        } else {
            full.into_iter().chain(half)
        };
        let found = ordered.into_iter().find(|layout| match layout {
            Layout::Single(path) | Layout::Sharded(path) => path.is_file(),
        });
        if let Some(layout) = found {
            return Ok(layout);
        }
    }
    for stem in WEIGHT_STEMS {
        let pickle = dir.join(format!("{stem}.bin"));
        if pickle.is_file() {
            return Err(ModelError::invalid_config(
                pickle,
                "PyTorch pickle weights are not supported; save the model with safetensors",
            ));
        }
    }
    Err(ModelError::MissingFile {
        path: dir.join(format!("{}.safetensors", WEIGHT_STEMS[0])),
    })
}

/// The part of a `*.safetensors.index.json` that says which shard holds each tensor.
#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl WeightSource {
    fn open(layout: Layout) -> Result<Self, ModelError> {
        match layout {
            Layout::Single(path) => {
                let file = map_file(&path)?;
                let routing = file
                    .tensors()
                    .into_iter()
                    .map(|(key, _)| (key, 0))
                    .collect();
                Ok(Self {
                    origin: path.clone(),
                    files: vec![(path, file)],
                    routing,
                    failures: Mutex::new(Vec::new()),
                })
            }
            Layout::Sharded(index_path) => {
                let index: ShardIndex = read_json(&index_path)?;
                let dir = index_path.parent().unwrap_or(Path::new("."));
                let mut shard_names: Vec<&String> = index.weight_map.values().collect();
                shard_names.sort();
                shard_names.dedup();
                let mut files = Vec::with_capacity(shard_names.len());
                let mut position = HashMap::new();
                for name in shard_names {
                    if Path::new(name).components().count() != 1 {
                        return Err(ModelError::invalid_config(
                            &index_path,
                            format!("shard {name:?} is not a plain file name in the same folder"),
                        ));
                    }
                    let path = dir.join(name);
                    position.insert(name.clone(), files.len());
                    files.push((path.clone(), map_file(&path)?));
                }
                let routing = index
                    .weight_map
                    .iter()
                    .map(|(key, shard)| (key.clone(), position[shard]))
                    .collect();
                Ok(Self {
                    origin: index_path,
                    files,
                    routing,
                    failures: Mutex::new(Vec::new()),
                })
            }
        }
    }

    /// Loads a tensor, checking its shape when one is expected.
    fn load(
        &self,
        key: &str,
        expected: Option<&Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, ModelError> {
        let missing_in = |file: &Path| ModelError::MissingTensor {
            file: file.to_path_buf(),
            key: key.to_string(),
        };
        let &index = self
            .routing
            .get(key)
            .ok_or_else(|| missing_in(&self.origin))?;
        let (path, file) = &self.files[index];
        // The index may list a key its shard lacks.
        let view = file.get(key).map_err(|_| missing_in(path))?;
        if let Some(expected) = expected {
            if view.shape() != expected.dims() {
                return Err(ModelError::ShapeMismatch {
                    file: path.clone(),
                    key: key.to_string(),
                    expected: expected.dims().to_vec(),
                    found: view.shape().to_vec(),
                });
            }
        }
        use safetensors::Dtype as Stored;
        if !matches!(
            view.dtype(),
            Stored::F16 | Stored::BF16 | Stored::F32 | Stored::F64
        ) {
            return Err(ModelError::invalid_config(
                path,
                format!(
                    "tensor {key} is stored as {:?}, not a float type",
                    view.dtype()
                ),
            ));
        }
        let tensor = file.load(key, device).and_then(|t| t.to_dtype(dtype));
        tensor.map_err(|error| {
            ModelError::invalid_config(path, format!("cannot read tensor {key}: {error}"))
        })
    }

    /// Reports a typed failure to candle as a message and remembers it.
    fn record(&self, failure: ModelError) -> candle_core::Error {
        let message = failure.to_string();
        if let Ok(mut failures) = self.failures.lock() {
            failures.push(failure);
        }
        candle_core::Error::Msg(message)
    }

    /// Turns a model constructor's error back into the typed failure that caused it, if any.
    fn explain(&self, error: candle_core::Error) -> ModelError {
        let text = error.to_string();
        let Ok(mut failures) = self.failures.lock() else {
            return ModelError::Candle(error);
        };
        // The most recent failure is the one that aborted construction; earlier ones may come from
        // optional tensors that a constructor probed for and did without.
        match failures
            .iter()
            .rposition(|failure| text.contains(&failure.to_string()))
        {
            Some(position) => failures.swap_remove(position),
            None => ModelError::Candle(error),
        }
    }
}

/// Memory-maps one safetensors file.
fn map_file(path: &Path) -> Result<MmapedSafetensors, ModelError> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: the mapping is read-only; model folders are not modified while a server runs, which
    // is the same assumption every memory-mapped model loader makes.
    unsafe { MmapedSafetensors::new(path) }.map_err(|error| {
        ModelError::invalid_config(path, format!("not a readable safetensors file: {error}"))
    })
}

/// The backend handed to candle; shares the source with [`ComponentWeights`] so that failures
/// recorded during construction can be recovered afterwards.
struct SharedSource(Arc<WeightSource>);

impl SimpleBackend for SharedSource {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .load(name, Some(&shape), dtype, device)
            .map_err(|failure| self.0.record(failure))
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .load(name, None, dtype, device)
            .map_err(|failure| self.0.record(failure))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.routing.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    fn write_tensors(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(key, tensor)| (key.to_string(), tensor.clone()))
            .collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    fn weight(rows: usize, cols: usize, offset: f32) -> Tensor {
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 + offset).collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    fn linear(vb: VarBuilder) -> candle_core::Result<candle_nn::Linear> {
        candle_nn::linear(3, 2, vb.pp("proj"))
    }

    #[test]
    fn single_file_loads_and_converts_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let w = weight(2, 3, 0.0).to_dtype(DType::F16).unwrap();
        let b = weight(1, 2, 1.0)
            .reshape(2)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        write_tensors(
            &dir.path().join("diffusion_pytorch_model.safetensors"),
            &[("proj.weight", w), ("proj.bias", b)],
        );
        let weights = ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let layer = weights.build(linear).unwrap();
        let input = Tensor::new(&[[1f32, 0.0, 0.0]], &Device::Cpu).unwrap();
        // Row j of the weight is [3j*0.5, ...]; input selects column 0; bias [1.0, 1.5].
        let out = layer.forward(&input).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(out, vec![vec![1.0, 3.0]]);
        assert_eq!(layer.weight().dtype(), DType::F32);
    }

    #[test]
    fn sharded_index_routes_keys_to_shards() {
        let dir = tempfile::tempdir().unwrap();
        write_tensors(
            &dir.path().join("model-00001-of-00002.safetensors"),
            &[("proj.weight", weight(2, 3, 0.0))],
        );
        write_tensors(
            &dir.path().join("model-00002-of-00002.safetensors"),
            &[("proj.bias", weight(1, 2, 7.0).reshape(2).unwrap())],
        );
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"metadata": {"total_size": 32}, "weight_map": {
                "proj.weight": "model-00001-of-00002.safetensors",
                "proj.bias": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let weights = ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        assert!(weights.origin().ends_with("model.safetensors.index.json"));
        let layer = weights.build(linear).unwrap();
        let bias = layer.bias().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bias, vec![7.0, 7.5]);
    }

    #[test]
    fn fp16_variant_preferred_only_for_f16() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("diffusion_pytorch_model.safetensors");
        let half = dir.path().join("diffusion_pytorch_model.fp16.safetensors");
        write_tensors(&full, &[("x", weight(1, 1, 1.0))]);
        write_tensors(
            &half,
            &[("x", weight(1, 1, 2.0).to_dtype(DType::F16).unwrap())],
        );
        let f32_weights = ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(f32_weights.origin(), full);
        let f16_weights = ComponentWeights::open(dir.path(), DType::F16, &Device::Cpu).unwrap();
        assert_eq!(f16_weights.origin(), half);
        std::fs::remove_file(&full).unwrap();
        let fallback = ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(fallback.origin(), half);
        let x = fallback.var_builder().get((1, 1), "x").unwrap();
        assert_eq!(x.dtype(), DType::F32);
        assert_eq!(x.to_vec2::<f32>().unwrap(), vec![vec![2.0]]);
    }

    #[test]
    fn missing_tensor_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffusion_pytorch_model.safetensors");
        write_tensors(&path, &[("proj.weight", weight(2, 3, 0.0))]);
        let weights = ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        match weights.build(linear) {
            Err(ModelError::MissingTensor { file, key }) => {
                assert_eq!(file, path);
                assert_eq!(key, "proj.bias");
            }
            other => panic!("expected a missing tensor, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn wrong_shape_names_file_key_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_tensors(
            &path,
            &[
                ("proj.weight", weight(3, 2, 0.0)),
                ("proj.bias", weight(1, 2, 0.0)),
            ],
        );
        let weights = ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let error = weights.build(linear).map(|_| ()).unwrap_err();
        let message = error.to_string();
        match error {
            ModelError::ShapeMismatch {
                file,
                key,
                expected,
                found,
            } => {
                assert_eq!(file, path);
                assert_eq!(key, "proj.weight");
                assert_eq!(expected, vec![2, 3]);
                assert_eq!(found, vec![3, 2]);
            }
            other => panic!("expected a shape mismatch, got {other:?}"),
        }
        assert!(message.contains("model.safetensors: tensor proj.weight has shape [3, 2]"));
    }

    #[test]
    fn missing_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        match ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu) {
            Err(ModelError::MissingFile { path }) => {
                assert!(path.ends_with("diffusion_pytorch_model.safetensors"))
            }
            other => panic!("expected a missing file, got {:?}", other.map(|_| ())),
        }
        // An index whose shard is absent names the shard.
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00001.safetensors"}}"#,
        )
        .unwrap();
        match ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu) {
            Err(ModelError::MissingFile { path }) => {
                assert!(path.ends_with("model-00001-of-00001.safetensors"))
            }
            other => panic!("expected a missing shard, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn key_listed_in_index_but_absent_from_shard_names_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("s1.safetensors");
        write_tensors(&shard, &[("proj.weight", weight(2, 3, 0.0))]);
        std::fs::write(
            dir.path()
                .join("diffusion_pytorch_model.safetensors.index.json"),
            r#"{"weight_map": {"proj.weight": "s1.safetensors", "proj.bias": "s1.safetensors"}}"#,
        )
        .unwrap();
        let weights = ComponentWeights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        match weights.build(linear) {
            Err(ModelError::MissingTensor { file, key }) => {
                assert_eq!(file, shard);
                assert_eq!(key, "proj.bias");
            }
            other => panic!("expected a missing tensor, got {:?}", other.map(|_| ())),
        }
    }
}
