//! `--matmul bf16` on a whole model: the gradient of every variable stays close to f32's, in
//! direction and size, with enough rows that every linear layer takes the bf16 kernel (not the
//! skinny decoding path).

mod common;

use candle_core::DType;
use metaapo::data::encode::EncodedSeq;
use metaapo::kernels::Matmul;
use metaapo::model::CausalLm;
use metaapo::train::grads::Gradients;

fn grads(policy: &CausalLm, reference: &CausalLm) -> Vec<Vec<f64>> {
    let seq = |start: u32, prompt_len| EncodedSeq {
        ids: (0..14).map(|i| 3 + (start + 7 * i) % 37).collect(),
        prompt_len,
    };
    let chosen: Vec<_> = (0..3).map(|i| seq(i, 4 + i as usize)).collect();
    let rejected: Vec<_> = (3..6).map(|i| seq(i, 4)).collect();
    let pol = metaapo::score::pair_logps(policy, &chosen, &rejected, 0).unwrap();
    let refs = metaapo::score::pair_logps(reference, &chosen, &rejected, 0)
        .unwrap()
        .detach();
    let out = metaapo::objective::dpo(&pol, &refs, &Default::default(), None).unwrap();
    let mut g = Gradients::new();
    g.accumulate(out.loss, policy.vars()).unwrap();
    policy
        .vars()
        .iter()
        .map(|(n, v)| {
            let t = g.get(v).unwrap_or_else(|| panic!("{n} got no gradient"));
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

#[test]
fn every_gradient_stays_near_f32() {
    for (arch, tied) in [("LlamaForCausalLM", false), ("Qwen2ForCausalLM", true)] {
        let policy = common::tiny_model(arch, tied, DType::F32, true);
        // A reference apart from the policy, so the loss has a slope in every pair.
        let reference = CausalLm::from_tensors(
            common::tiny_config(arch, tied),
            common::random_tensors(&common::tiny_config(arch, tied), 8),
            "another seed",
            DType::F32,
            false,
        )
        .unwrap();
        let exact = grads(&policy, &reference);
        let bf16 = grads(&policy.with_matmul(Matmul::Bf16), &reference);
        for (((name, _), a), b) in policy.vars().iter().zip(&bf16).zip(&exact) {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let (cosine, ratio) = (dot / (norm(a) * norm(b)), norm(a) / norm(b));
            assert!(a.iter().any(|x| *x != 0.0), "{arch} {name}: no gradient");
            assert!(
                cosine > 0.99 && (ratio - 1.0).abs() < 0.03,
                "{arch} {name}: cosine {cosine}, norm ratio {ratio}"
            );
        }
    }
}
