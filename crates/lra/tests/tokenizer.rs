//! Byte and character tokenizers, and their `tokenizer.json` round trip.

use lra::{ByteTokenizer, CharTokenizer, Error, PAD, Tokenize, load_tokenizer};

/// Ids the `tokenizers` representation produces.
fn hf_ids(tok: &dyn Tokenize, text: &str) -> Vec<u32> {
    tok.to_hf()
        .unwrap()
        .encode(text, true)
        .unwrap()
        .get_ids()
        .to_vec()
}

const TEXTS: [&str; 6] = [
    "A fine film.<br /><br />Really, \"really\" good!",
    "é",
    "naïve café — 日本語 😀 \u{7f}\t\n\r end",
    "",
    "  leading and trailing spaces  ",
    "<pad><unk><eos> are plain text here",
];

#[test]
fn byte_tokens_are_utf8_bytes_plus_one() {
    let tok = ByteTokenizer::new(4096);
    assert_eq!(tok.encode("é"), vec![0xC3 + 1, 0xA9 + 1]);
    assert_eq!(
        tok.encode("😀"),
        vec![0xF0 + 1, 0x9F + 1, 0x98 + 1, 0x80 + 1]
    );
    let br = tok.encode("a<br />b");
    assert_eq!(
        br,
        "a<br />b".bytes().map(|b| b as u32 + 1).collect::<Vec<_>>()
    );
    assert_eq!(br.len(), 8);
    assert_eq!(tok.vocab_size(), 257);
    for t in TEXTS {
        let ids = tok.encode(t);
        assert_eq!(ids.len(), t.len());
        assert!(ids.iter().all(|&i| (1..257).contains(&i) && i != PAD));
        let back: Vec<u8> = ids.iter().map(|&i| (i - 1) as u8).collect();
        assert_eq!(String::from_utf8(back).unwrap(), t);
    }
}

#[test]
fn byte_truncation_keeps_true_length() {
    let tok = ByteTokenizer::new(5);
    assert_eq!(tok.encode("abc").len(), 3);
    // "ab" + 3 bytes of "😀" (4 bytes): cut inside the character, as LRA does on raw bytes.
    let ids = tok.encode("ab😀cd");
    assert_eq!(ids.len(), 5);
    assert_eq!(
        ids,
        "ab😀cd"
            .bytes()
            .take(5)
            .map(|b| b as u32 + 1)
            .collect::<Vec<_>>()
    );
}

#[test]
fn char_vocab_order_ties_and_min_freq() {
    // Counts: 'a' 5, 'b' 3, 'c' 3, 'é' 3, 'd' 2, 'z' 1.
    let texts: Vec<String> = vec!["aaabbé".into(), "aacccéé".into(), "ddzb".into()];
    let tok = CharTokenizer::build(&texts, 3, 100).unwrap();
    // Descending count, ties by code point ('b' < 'c' < 'é'); 'd' and 'z' below min_freq.
    assert_eq!(tok.chars(), &['a', 'b', 'c', 'é']);
    assert_eq!(tok.vocab_size(), 3 + 4);
    assert_eq!(tok.encode("abé"), vec![3, 4, 6, CharTokenizer::EOS]);
    // Unknown characters map to <unk>, one per character.
    assert_eq!(tok.encode("dzd"), vec![1, 1, 1, 2]);
    assert_eq!(tok.encode(""), vec![CharTokenizer::EOS]);
    let tok2 = CharTokenizer::build(&texts, 2, 100).unwrap();
    assert_eq!(tok2.chars(), &['a', 'b', 'c', 'é', 'd']);
}

#[test]
fn char_truncation_leaves_room_for_eos() {
    let texts: Vec<String> = vec!["abcdefgh".repeat(20)];
    let tok = CharTokenizer::build(&texts, 15, 4).unwrap();
    let ids = tok.encode("abcdefgh");
    assert_eq!(ids.len(), 4);
    assert_eq!(&ids[..3], &tok.encode("abc")[..3]);
    assert_eq!(ids[3], CharTokenizer::EOS);
    assert!(matches!(
        CharTokenizer::build(&texts, 1, 0),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn tokenizers_crate_representation_encodes_identically() {
    let byte = ByteTokenizer::new(4096);
    let short = ByteTokenizer::new(7);
    let corpus: Vec<String> = TEXTS.iter().map(|t| t.repeat(15)).collect();
    let chars = CharTokenizer::build(&corpus, 15, 4096).unwrap();
    let chars_short = CharTokenizer::build(&corpus, 15, 6).unwrap();
    let toks: [&dyn Tokenize; 4] = [&byte, &short, &chars, &chars_short];
    // All code points of a few ranges, to cover every UTF-8 byte that valid text can contain.
    let wide: String = (0x20u32..0x800)
        .chain(0x3040..0x3100)
        .chain(0x1F600..0x1F650)
        .filter_map(char::from_u32)
        .collect();
    for tok in toks {
        for t in TEXTS.iter().copied().chain([wide.as_str()]) {
            assert_eq!(hf_ids(tok, t), tok.encode(t), "{:?} on {t:?}", tok.kind());
        }
    }
}

#[test]
fn tokenizer_json_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let corpus: Vec<String> = TEXTS.iter().map(|t| t.repeat(20)).collect();
    let chars = CharTokenizer::build(&corpus, 15, 64).unwrap();
    let byte = ByteTokenizer::new(33);
    let toks: [&dyn Tokenize; 2] = [&byte, &chars];
    for (i, tok) in toks.into_iter().enumerate() {
        let path = dir.path().join(format!("tokenizer-{i}.json"));
        tok.save(&path).unwrap();
        let back = load_tokenizer(&path).unwrap();
        assert_eq!(back.kind(), tok.kind());
        assert_eq!(back.vocab_size(), tok.vocab_size());
        assert_eq!(back.max_len(), tok.max_len());
        for t in TEXTS {
            assert_eq!(back.encode(t), tok.encode(t));
        }
    }
    // The char tokenizer comes back with its exact order.
    let path = dir.path().join("tokenizer-1.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = &json["model"]["vocab"];
    for (i, c) in chars.chars().iter().enumerate() {
        assert_eq!(vocab[c.to_string()], i as u64 + 3);
    }
}

#[test]
fn bad_tokenizer_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{not json").unwrap();
    let err = load_tokenizer(&path).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tokenizer { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // A char vocabulary with a hole in its ids.
    let tok = CharTokenizer::from_chars(vec!['a', 'b'], 10).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&tok.to_hf().unwrap().to_string(false).unwrap()).unwrap();
    json["model"]["vocab"]["b"] = serde_json::json!(9);
    std::fs::write(&path, json.to_string()).unwrap();
    let msg = load_tokenizer(&path).err().unwrap().to_string();
    assert!(msg.contains("without gaps"), "{msg}");
}
