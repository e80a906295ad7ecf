//! Bucketed batching.

use lra::{Batcher, ByteTokenizer, Encoded, Split};
use rand::{Rng, SeedableRng};

/// `n` examples with random lengths in 1..=max (token ids encode the example index).
fn random_encoded(n: usize, max: usize, seed: u64) -> Encoded {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut e = Encoded::default();
    for i in 0..n {
        let len = rng.random_range(1..=max);
        e.tokens.push(vec![i as u32 + 1; len]);
        e.labels.push((i % 2) as u32);
    }
    e
}

fn flatten(order: &[Vec<usize>]) -> Vec<usize> {
    let mut all: Vec<usize> = order.iter().flatten().copied().collect();
    all.sort();
    all
}

fn total_padding(b: &Batcher, order: &[Vec<usize>]) -> usize {
    order.iter().map(|ix| b.batch(ix).padding()).sum()
}

#[test]
fn every_example_once_per_epoch() {
    let n = 1003;
    let b = Batcher::new(random_encoded(n, 500, 1), 16, 7)
        .unwrap()
        .with_bucket_batches(10);
    for epoch in 0..3 {
        let order = b.train_order(epoch);
        assert_eq!(order.len(), b.num_batches());
        assert_eq!(flatten(&order), (0..n).collect::<Vec<_>>());
        assert!(order.iter().all(|ix| ix.len() <= 16));
        assert_eq!(order.iter().filter(|ix| ix.len() < 16).count(), 1);
    }
    assert_eq!(flatten(&b.eval_order()), (0..n).collect::<Vec<_>>());
}

#[test]
fn seeds_and_epochs_determine_the_order() {
    let data = random_encoded(500, 300, 2);
    let a = Batcher::new(data.clone(), 8, 42).unwrap();
    let same = Batcher::new(data.clone(), 8, 42).unwrap();
    let other = Batcher::new(data, 8, 43).unwrap();
    assert_eq!(a.train_order(0), same.train_order(0));
    assert_ne!(a.train_order(0), other.train_order(0));
    assert_ne!(a.train_order(0), a.train_order(1));
    assert_eq!(a.eval_order(), other.eval_order());
    // Evaluation order: non-increasing length.
    let lens: Vec<usize> = a
        .eval_order()
        .iter()
        .flatten()
        .map(|&i| a.data().tokens[i].len())
        .collect();
    assert!(lens.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn bucketing_reduces_padding() {
    let data = random_encoded(2000, 2000, 3);
    let bucketed = Batcher::new(data.clone(), 16, 5)
        .unwrap()
        .with_bucket_batches(50);
    let plain = Batcher::new(data, 16, 5).unwrap().with_bucket_batches(1);
    let pb = total_padding(&bucketed, &bucketed.train_order(0));
    let pp = total_padding(&plain, &plain.train_order(0));
    assert!(pb * 5 < pp, "bucketed padding {pb} vs unbucketed {pp}");
    // The computed positions of an epoch are its true tokens plus the padding of its batches.
    let true_tokens = bucketed.data().num_tokens();
    assert_eq!(
        true_tokens,
        bucketed.data().tokens.iter().map(Vec::len).sum::<usize>()
    );
    assert_eq!(bucketed.computed_tokens(0), true_tokens + pb);
    assert_eq!(plain.computed_tokens(0), true_tokens + pp);
    let assembled: usize = plain.train_epoch(0).map(|b| b.batch * b.len).sum();
    assert_eq!(plain.computed_tokens(0), assembled);
    // Batches are still mixed across the epoch: not sorted by length overall.
    let order = bucketed.train_order(0);
    let firsts: Vec<usize> = order
        .iter()
        .map(|ix| bucketed.data().tokens[ix[0]].len())
        .collect();
    assert!(firsts.windows(2).any(|w| w[0] < w[1]));
}

#[test]
fn batch_layout_lengths_and_mask() {
    let split = Split {
        texts: vec!["abc".into(), "é".into(), "hello world".into()],
        labels: vec![1, 0, 1],
    };
    let tok = ByteTokenizer::new(5);
    let b = Batcher::new(Encoded::new(&tok, &split), 4, 0).unwrap();
    let batch = b.batch(&[0, 1, 2]);
    assert_eq!(batch.batch, 3);
    assert_eq!(batch.len, 5); // "hello world" truncated at max_len 5
    assert_eq!(batch.lengths, vec![3, 2, 5]);
    assert_eq!(batch.labels, vec![1, 0, 1]);
    let row = |r: usize| &batch.tokens[r * 5..r * 5 + 5];
    assert_eq!(
        row(0),
        &[b'a' as u32 + 1, b'b' as u32 + 1, b'c' as u32 + 1, 0, 0]
    );
    assert_eq!(row(1), &[0xC3 + 1, 0xA9 + 1, 0, 0, 0]);
    assert_eq!(
        row(2),
        &"hello".bytes().map(|c| c as u32 + 1).collect::<Vec<_>>()[..]
    );
    let mask = batch.mask();
    for r in 0..3 {
        for t in 0..5 {
            let real = batch.tokens[r * 5 + t] != 0;
            assert_eq!(mask[r * 5 + t] == 1.0, real);
            assert_eq!(batch.is_token(r, t), real);
        }
    }
    assert_eq!(batch.padding(), 15 - 10);
    // A batch of short examples is only as long as its longest one.
    assert_eq!(b.batch(&[1]).len, 2);
}

#[test]
fn invalid_arguments() {
    assert!(Batcher::new(Encoded::default(), 0, 0).is_err());
    let bad = Encoded {
        tokens: vec![vec![1]],
        labels: vec![],
    };
    assert!(Batcher::new(bad, 2, 0).is_err());
}
