//! The models this server accepts jobs for, as the API describes them.

use crate::api::ModelDescriptor;

#[derive(Debug, Clone, Default)]
pub struct ModelCatalog {
    models: Vec<ModelDescriptor>,
}

impl ModelCatalog {
    /// Exactly one model ends up marked default: the first one already marked, else the first.
    pub fn new(mut models: Vec<ModelDescriptor>) -> ModelCatalog {
        let default_index = models.iter().position(|m| m.default).unwrap_or(0);
        for (index, model) in models.iter_mut().enumerate() {
            model.default = index == default_index;
        }
        ModelCatalog { models }
    }

    pub fn models(&self) -> &[ModelDescriptor] {
        &self.models
    }

    pub fn get(&self, id: &str) -> Option<&ModelDescriptor> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn default_model(&self) -> Option<&ModelDescriptor> {
        self.models.iter().find(|m| m.default)
    }
}
