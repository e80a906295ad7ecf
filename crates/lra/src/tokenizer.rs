//! Tokenizers: LRA byte level and the S4/S5 character vocabulary, each saved as a `tokenizer.json`
//! of the Hugging Face `tokenizers` crate so that a checkpoint describes its own input.
//!
//! Encoding runs natively (a table lookup per byte or character); the `tokenizers` representation
//! ([`Tokenize::to_hf`]) is what is written to disk, and the tests check that it encodes every text
//! to the same ids.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{Tokenizer, TruncationParams};

use crate::store::Split;
use crate::{DataConfig, Error, Result, TokenizerKind};

/// Padding id of both tokenizers.
pub const PAD: u32 = 0;

/// Text to token ids.
pub trait Tokenize: Send + Sync {
    /// Token ids of `text`, at most [`Tokenize::max_len`] of them; the true length of the sequence is
    /// the length of the returned vector (padding is added only by the batcher).
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Number of ids, padding included (ids lie in `0..vocab_size`).
    fn vocab_size(&self) -> usize;
    /// Maximum number of ids [`Tokenize::encode`] returns.
    fn max_len(&self) -> usize;
    /// Which tokenizer this is.
    fn kind(&self) -> TokenizerKind;
    /// The same tokenizer as a `tokenizers::Tokenizer` (what [`Tokenize::save`] writes).
    fn to_hf(&self) -> Result<Tokenizer>;
    /// Writes `tokenizer.json` (Hugging Face `tokenizers` format) to `path`, atomically.
    fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .to_hf()?
            .to_string(true)
            .map_err(|e| Error::Tokenizer {
                path: path.display().to_string(),
                detail: e.to_string(),
                fix: "report this as a bug".into(),
            })?;
        let tmp = crate::store::tmp_path(path);
        std::fs::write(&tmp, json).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&tmp, e)
        })?;
        crate::store::commit(&tmp, path)
    }
}

fn hf_err(detail: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        path: "<memory>".into(),
        detail: detail.to_string(),
        fix: "report this as a bug".into(),
    }
}

/// GPT-2's reversible byte → printable character table (Radford et al., 2019, `bytes_to_unicode`),
/// which the `tokenizers` byte-level pre-tokenizer applies: printable Latin-1 bytes map to
/// themselves, the other bytes to U+0100 + k in byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + extra).expect("valid code point");
            extra += 1;
            c
        };
    }
    table
}

/// LRA byte-level tokenizer (Tay et al., ICLR 2021): id = UTF-8 byte + 1, 0 = padding, vocabulary 257,
/// truncation to `max_len` bytes. `<br />` tags and non-ASCII text are kept as their bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteTokenizer {
    /// Truncation length in bytes.
    pub max_len: usize,
}

impl ByteTokenizer {
    /// Vocabulary size: 256 bytes + padding.
    pub const VOCAB_SIZE: usize = 257;

    /// A byte tokenizer truncating at `max_len`.
    pub fn new(max_len: usize) -> Self {
        Self { max_len }
    }
}

impl Tokenize for ByteTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes()
            .take(self.max_len)
            .map(|b| u32::from(b) + 1)
            .collect()
    }

    fn vocab_size(&self) -> usize {
        Self::VOCAB_SIZE
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn kind(&self) -> TokenizerKind {
        TokenizerKind::Byte
    }

    /// Byte-level pre-tokenizer (no regex split, no prefix space) + a BPE model without merges whose
    /// vocabulary maps each byte's character to byte + 1 and `<pad>` to 0, truncation at `max_len`.
    fn to_hf(&self) -> Result<Tokenizer> {
        let mut vocab: Vocab = Vocab::default();
        vocab.insert("<pad>".into(), PAD);
        for (b, c) in byte_chars().iter().enumerate() {
            vocab.insert(c.to_string(), b as u32 + 1);
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .map_err(hf_err)?;
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, false, false)))
            .with_decoder(Some(ByteLevel::new(false, false, false)))
            .with_truncation(Some(TruncationParams {
                max_length: self.max_len,
                ..Default::default()
            }))
            .map_err(hf_err)?;
        Ok(tok)
    }
}

/// The S4/S5 character vocabulary for IMDb: Unicode code points seen at least `min_freq` (15) times
/// in the train split, after the specials `<pad>`=0, `<unk>`=1, `<eos>`=2, ordered by descending
/// frequency, ties by code point; a sequence is its first `max_len - 1` characters followed by `<eos>`
/// (4095 + 1 for `max_len` 4096). Unknown characters map to `<unk>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
    max_len: usize,
}

impl CharTokenizer {
    /// Minimum count of a character in the train split (S4/S5 IMDb setting).
    pub const MIN_FREQ: usize = 15;
    /// Id of `<unk>`.
    pub const UNK: u32 = 1;
    /// Id of `<eos>`.
    pub const EOS: u32 = 2;
    /// Number of special ids (`<pad>`, `<unk>`, `<eos>`).
    pub const SPECIALS: usize = 3;

    /// Builds the vocabulary from `texts` (the train split).
    ///
    /// Errors: [`Error::Invalid`] if `max_len` is 0 (no room for `<eos>`).
    pub fn build(texts: &[String], min_freq: usize, max_len: usize) -> Result<Self> {
        let mut counts: HashMap<char, usize> = HashMap::new();
        for t in texts {
            for c in t.chars() {
                *counts.entry(c).or_default() += 1;
            }
        }
        let mut kept: Vec<(char, usize)> =
            counts.into_iter().filter(|&(_, n)| n >= min_freq).collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Self::from_chars(kept.into_iter().map(|(c, _)| c).collect(), max_len)
    }

    /// A tokenizer with the given characters at ids 3, 4, ….
    ///
    /// Errors: [`Error::Invalid`] if `max_len` is 0 or a character repeats.
    pub fn from_chars(chars: Vec<char>, max_len: usize) -> Result<Self> {
        if max_len == 0 {
            return Err(Error::Invalid(
                "char tokenizer needs max_len >= 1 (for <eos>)".into(),
            ));
        }
        let mut ids = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            if ids.insert(c, (i + Self::SPECIALS) as u32).is_some() {
                return Err(Error::Invalid(format!(
                    "character {c:?} appears twice in the vocabulary"
                )));
            }
        }
        Ok(Self {
            chars,
            ids,
            max_len,
        })
    }

    /// The characters in id order (id = index + 3).
    pub fn chars(&self) -> &[char] {
        &self.chars
    }
}

impl Tokenize for CharTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out: Vec<u32> = text
            .chars()
            .take(self.max_len - 1)
            .map(|c| self.ids.get(&c).copied().unwrap_or(Self::UNK))
            .collect();
        out.push(Self::EOS);
        out
    }

    fn vocab_size(&self) -> usize {
        self.chars.len() + Self::SPECIALS
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn kind(&self) -> TokenizerKind {
        TokenizerKind::Char
    }

    /// No pre-tokenizer (the text is one word), a BPE model without merges over single characters
    /// with `<unk>` for unknown characters (not fused), a template appending `<eos>`, truncation at
    /// `max_len` (which counts the `<eos>`).
    fn to_hf(&self) -> Result<Tokenizer> {
        let mut vocab: Vocab = Vocab::default();
        vocab.insert("<pad>".into(), PAD);
        vocab.insert("<unk>".into(), Self::UNK);
        vocab.insert("<eos>".into(), Self::EOS);
        for (i, c) in self.chars.iter().enumerate() {
            vocab.insert(c.to_string(), (i + Self::SPECIALS) as u32);
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .unk_token("<unk>".into())
            .fuse_unk(false)
            .build()
            .map_err(hf_err)?;
        let template = TemplateProcessing::builder()
            .try_single("$A <eos>")
            .map_err(hf_err)?
            .special_tokens(vec![("<eos>", Self::EOS)])
            .build()
            .map_err(hf_err)?;
        let mut tok = Tokenizer::new(model);
        tok.with_post_processor(Some(template))
            .with_truncation(Some(TruncationParams {
                max_length: self.max_len,
                ..Default::default()
            }))
            .map_err(hf_err)?;
        Ok(tok)
    }
}

/// Builds the tokenizer `cfg.tokenizer` names (the char vocabulary from `train`, min_freq 15).
pub fn build_tokenizer(cfg: &DataConfig, train: &Split) -> Result<Box<dyn Tokenize>> {
    Ok(match cfg.tokenizer {
        TokenizerKind::Byte => Box::new(ByteTokenizer::new(cfg.max_len)),
        TokenizerKind::Char => Box::new(CharTokenizer::build(
            &train.texts,
            CharTokenizer::MIN_FREQ,
            cfg.max_len,
        )?),
    })
}

/// Reads a `tokenizer.json` written by [`Tokenize::save`] and rebuilds the tokenizer.
///
/// Errors: [`Error::Tokenizer`] if the file is not a `tokenizers` JSON of one of our two layouts.
pub fn load_tokenizer(path: &Path) -> Result<Box<dyn Tokenize>> {
    let bad = |detail: String| Error::Tokenizer {
        path: path.display().to_string(),
        detail,
        fix: "use the tokenizer.json saved with the checkpoint, or rebuild it from the config"
            .into(),
    };
    let tok =
        Tokenizer::from_file(path).map_err(|e| bad(format!("not a tokenizers JSON ({e})")))?;
    let max_len = tok
        .get_truncation()
        .map(|t| t.max_length)
        .ok_or_else(|| bad("no truncation length".into()))?;
    let vocab = tok.get_vocab(false);
    let is_byte = matches!(
        tok.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::ByteLevel(_))
    );
    if is_byte {
        let byte = ByteTokenizer::new(max_len);
        let expected = byte.to_hf()?.get_vocab(false);
        if vocab != expected {
            return Err(bad(
                "byte-level vocabulary differs from byte + 1 with <pad> = 0".into(),
            ));
        }
        return Ok(Box::new(byte));
    }
    let specials = [
        ("<pad>", PAD),
        ("<unk>", CharTokenizer::UNK),
        ("<eos>", CharTokenizer::EOS),
    ];
    for (name, id) in specials {
        if vocab.get(name) != Some(&id) {
            return Err(bad(format!("{name} is not id {id}")));
        }
    }
    let mut chars = vec!['\0'; vocab.len().saturating_sub(CharTokenizer::SPECIALS)];
    let mut seen = vec![false; chars.len()];
    for (s, &id) in &vocab {
        if specials.iter().any(|(name, _)| name == s) {
            continue;
        }
        let mut it = s.chars();
        let (Some(c), None) = (it.next(), it.next()) else {
            return Err(bad(format!("entry {s:?} is not a single character")));
        };
        let slot = (id as usize)
            .checked_sub(CharTokenizer::SPECIALS)
            .filter(|&k| k < chars.len() && !seen[k])
            .ok_or_else(|| {
                bad(format!(
                    "ids are not 3..{} without gaps (at {s:?} = {id})",
                    vocab.len()
                ))
            })?;
        chars[slot] = c;
        seen[slot] = true;
    }
    Ok(Box::new(CharTokenizer::from_chars(chars, max_len)?))
}
