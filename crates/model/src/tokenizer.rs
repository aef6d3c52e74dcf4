//! The CLIP BPE tokenizer, producing the same ids as transformers' `CLIPTokenizer`.
//!
//! It is read from a pipeline's `tokenizer/` folder: `tokenizer.json` when present, otherwise
//! `vocab.json` + `merges.txt`, from which the same pipeline transformers builds is assembled
//! (NFC, whitespace runs → one space, lower case; CLIP's split pattern; byte-level BPE with the
//! `</w>` end-of-word suffix). `tokenizer_config.json` / `special_tokens_map.json` give the
//! special tokens and `model_max_length`.
//!
//! Every encoding is `[bos] text… [eos] [pad]…`, exactly `max_length` ids: over-long text is cut
//! so that the end-of-text token survives, like transformers' truncation.

use std::path::Path;

use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::ModelError;
use crate::weights::read_json;

/// transformers' CLIP pre-tokenization pattern: the special tokens, English contractions, runs of
/// letters, single digits, and runs of other non-space characters.
const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
/// CLIP's context length, used when the configuration does not say.
const DEFAULT_MAX_LENGTH: usize = 77;
/// transformers writes a huge `model_max_length` (1e30) when a tokenizer has no limit.
const UNLIMITED_LENGTH_THRESHOLD: f64 = 1e12;

/// A CLIP tokenizer that pads every prompt to a fixed length.
pub struct ClipTokenizer {
    inner: Tokenizer,
    max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

/// A special token in `tokenizer_config.json`: a plain string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    fn content(&self) -> &str {
        match self {
            SpecialToken::Text(text) => text,
            SpecialToken::Added { content } => content,
        }
    }
}

/// The fields of `tokenizer_config.json` and `special_tokens_map.json` that matter here.
#[derive(Debug, Default, Deserialize)]
struct TokenizerSettings {
    model_max_length: Option<f64>,
    bos_token: Option<SpecialToken>,
    eos_token: Option<SpecialToken>,
    unk_token: Option<SpecialToken>,
    pad_token: Option<SpecialToken>,
}

impl TokenizerSettings {
    /// Reads `tokenizer_config.json`, filling gaps from `special_tokens_map.json`.
    fn read(dir: &Path) -> Result<Self, ModelError> {
        let read_optional = |name: &str| -> Result<TokenizerSettings, ModelError> {
            let path = dir.join(name);
            if path.is_file() {
                read_json(&path)
            } else {
                Ok(TokenizerSettings::default())
            }
        };
        let config = read_optional("tokenizer_config.json")?;
        let map = read_optional("special_tokens_map.json")?;
        Ok(Self {
            model_max_length: config.model_max_length,
            bos_token: config.bos_token.or(map.bos_token),
            eos_token: config.eos_token.or(map.eos_token),
            unk_token: config.unk_token.or(map.unk_token),
            pad_token: config.pad_token.or(map.pad_token),
        })
    }
}

impl ClipTokenizer {
    /// Loads the tokenizer of a pipeline's `tokenizer/` folder.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let settings = TokenizerSettings::read(dir)?;
        let token = |value: &Option<SpecialToken>, default: &str| {
            value
                .as_ref()
                .map_or(default.to_string(), |t| t.content().to_string())
        };
        let bos = token(&settings.bos_token, DEFAULT_BOS);
        let eos = token(&settings.eos_token, DEFAULT_EOS);
        let unk = token(&settings.unk_token, DEFAULT_EOS);
        // CLIPTokenizer pads with its end-of-text token unless told otherwise; ModelScope pads
        // with "!".
        let pad = token(&settings.pad_token, DEFAULT_EOS);

        let json_path = dir.join("tokenizer.json");
        let (mut inner, origin) = if json_path.is_file() {
            let inner = Tokenizer::from_file(&json_path).map_err(|error| {
                ModelError::invalid_config(&json_path, format!("cannot load tokenizer: {error}"))
            })?;
            (inner, json_path)
        } else {
            let vocab = dir.join("vocab.json");
            (
                build_from_vocab_and_merges(&vocab, &dir.join("merges.txt"), &unk)?,
                vocab,
            )
        };
        // transformers registers every configured special token, the pad token included, as an
        // unsplittable added token: with a "!" pad token, a "!" in a prompt becomes the pad id
        // rather than the word-final "!</w>". Doing the same keeps the ids identical.
        let specials =
            [&bos, &eos, &unk, &pad].map(|content| AddedToken::from(content.as_str(), true));
        inner.add_special_tokens(specials).map_err(|error| {
            ModelError::invalid_config(&origin, format!("cannot add special tokens: {error}"))
        })?;

        let id_of = |content: &str| {
            inner.token_to_id(content).ok_or_else(|| {
                ModelError::invalid_config(&origin, format!("special token {content:?} has no id"))
            })
        };
        let (bos_id, eos_id, pad_id) = (id_of(&bos)?, id_of(&eos)?, id_of(&pad)?);
        let max_length = match settings.model_max_length {
            Some(length) if length < UNLIMITED_LENGTH_THRESHOLD => length as usize,
            _ => DEFAULT_MAX_LENGTH,
        };
        if max_length < 2 {
            return Err(ModelError::invalid_config(
                dir.join("tokenizer_config.json"),
                format!(
                    "model_max_length {max_length} leaves no room for the start and end tokens"
                ),
            ));
        }
        Ok(Self {
            inner,
            max_length,
            bos_id,
            eos_id,
            pad_id,
        })
    }

    /// The length of every encoding (`model_max_length`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of `text`: `[bos] tokens… [eos]`, cut to `max_length` keeping the end token,
    /// then padded with the pad token to exactly `max_length` ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self.inner.encode(text, false).map_err(|error| {
            ModelError::invalid_config("tokenizer", format!("cannot tokenize prompt: {error}"))
        })?;
        let content = encoding.get_ids();
        let kept = content.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&content[..kept]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        Ok(ids)
    }
}

/// Assembles transformers' `CLIPTokenizer` pipeline around a vocabulary and merge list.
fn build_from_vocab_and_merges(
    vocab: &Path,
    merges: &Path,
    unk: &str,
) -> Result<Tokenizer, ModelError> {
    for path in [vocab, merges] {
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path: path.to_path_buf(),
            });
        }
    }
    let invalid = |message: String| ModelError::invalid_config(vocab, message);
    let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .fuse_unk(false)
        .unk_token(unk.into())
        .build()
        .map_err(|error| {
            invalid(format!(
                "cannot build the BPE model from vocab.json and merges.txt: {error}"
            ))
        })?;
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|error| invalid(error.to_string()))?;
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|error| invalid(error.to_string()))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])))
        .map_err(|error| invalid(error.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// GPT-2/CLIP's byte → printable character table, in the order of CLIP's vocabulary: the
    /// printable bytes first (as themselves), then the other bytes mapped to U+0100 onwards.
    fn bytes_to_unicode() -> Vec<char> {
        let printable: Vec<u32> = (u32::from('!')..=u32::from('~'))
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect();
        let others = (0..256u32).filter(|byte| !printable.contains(byte)).count() as u32;
        printable
            .iter()
            .copied()
            .chain(256..256 + others)
            .map(|code| char::from_u32(code).unwrap())
            .collect()
    }

    /// A tiny CLIP-style vocabulary: every byte with and without `</w>`, a few merges, and the two
    /// special tokens — the same construction as the probe that produced the expected ids below
    /// with transformers 5.24 (`CLIPTokenizer(vocab, merges, pad_token="!")`).
    fn write_tiny_vocab(dir: &Path) {
        let base = bytes_to_unicode();
        let mut tokens: Vec<String> = base.iter().map(|c| c.to_string()).collect();
        tokens.extend(base.iter().map(|c| format!("{c}</w>")));
        let merges = ["h i</w>", "h e", "he l", "hel l", "hell o</w>"];
        tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
        tokens.push(DEFAULT_BOS.into());
        tokens.push(DEFAULT_EOS.into());
        let vocab: BTreeMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        std::fs::write(
            dir.join("vocab.json"),
            serde_json::to_string(&vocab).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("merges.txt"),
            format!("#version: 0.2\n{}\n", merges.join("\n")),
        )
        .unwrap();
    }

    fn tiny_tokenizer(max_length: usize) -> ClipTokenizer {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_vocab(dir.path());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            format!(r#"{{"model_max_length": {max_length}, "pad_token": {{"content": "!", "special": true}}}}"#),
        )
        .unwrap();
        ClipTokenizer::load(dir.path()).unwrap()
    }

    #[test]
    fn matches_transformers_on_tiny_vocab() {
        let tokenizer = tiny_tokenizer(12);
        let cases: [(&str, &[u32]); 4] = [
            ("hi!", &[517, 512, 0, 518]),
            ("hello !", &[517, 516, 0, 518]),
            (
                "HELLO  world!!",
                &[517, 516, 86, 78, 81, 75, 323, 0, 0, 518],
            ),
            ("a!b", &[517, 320, 0, 321, 518]),
        ];
        for (text, expected) in cases {
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(ids.len(), 12);
            assert_eq!(&ids[..expected.len()], expected, "{text}");
            assert!(ids[expected.len()..].iter().all(|&id| id == 0), "{text}");
        }
    }

    #[test]
    fn truncation_keeps_end_token() {
        let tokenizer = tiny_tokenizer(5);
        // "hello hello hello hello" has 4 tokens; 5 ids leave room for 3.
        let ids = tokenizer.encode("hello hello hello hello").unwrap();
        assert_eq!(ids, vec![517, 516, 516, 516, 518]);
        assert_eq!(tokenizer.encode("").unwrap(), vec![517, 518, 0, 0, 0]);
    }

    #[test]
    fn missing_vocabulary_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        match ClipTokenizer::load(dir.path()) {
            Err(ModelError::MissingFile { path }) => assert!(path.ends_with("vocab.json")),
            other => panic!("expected a missing file, got {:?}", other.map(|_| ())),
        }
    }
}
