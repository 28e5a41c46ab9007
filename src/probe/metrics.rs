//! Test metrics: top-1, top-5, mean per-class recall, per-class accuracy and confusion.
use tch::{Kind, Tensor};

pub struct Metrics {
    pub top1: f64,
    pub top5: f64,
    /// Mean over classes of each class's recall (balanced accuracy).
    pub mean_per_class_recall: f64,
    /// (support, correct) per class.
    pub per_class: Vec<(i64, i64)>,
    /// confusion[true][predicted] counts.
    pub confusion: Vec<Vec<i64>>,
}

/// Scores `logits` (N, C) against labels `y` (N).
pub fn score(logits: &Tensor, y: &Tensor, classes: usize) -> Metrics {
    let logits = logits.to_device(tch::Device::Cpu);
    let y = y.to_device(tch::Device::Cpu);
    let k = 5.min(classes as i64);
    let (_, top) = logits.topk(k, 1, true, true);
    let hit5 = top.eq_tensor(&y.unsqueeze(1)).any_dim(1, false);
    let pred = logits.argmax(1, false);
    let c = classes as i64;
    let flat = (&y * c + &pred).bincount::<Tensor>(None, c * c);
    let counts: Vec<i64> = Vec::<i64>::try_from(flat).unwrap_or_default();
    let confusion: Vec<Vec<i64>> = counts.chunks(classes).map(|r| r.to_vec()).collect();
    let per_class: Vec<(i64, i64)> = confusion.iter().enumerate().map(|(i, r)| (r.iter().sum(), r[i])).collect();
    let present: Vec<f64> = per_class.iter().filter(|(n, _)| *n > 0).map(|(n, ok)| *ok as f64 / *n as f64).collect();
    let n = y.size()[0] as f64;
    Metrics {
        top1: pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as f64 / n,
        top5: hit5.sum(Kind::Int64).int64_value(&[]) as f64 / n,
        mean_per_class_recall: present.iter().sum::<f64>() / present.len().max(1) as f64,
        per_class,
        confusion,
    }
}

pub fn accuracy(logits: &Tensor, y: &Tensor) -> f64 {
    logits.argmax(1, false).eq_tensor(y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
}
